-- Record one attempt and/or the one final outcome of a task, atomically with the run's counters
-- and the batch's hash chain (worker/ledger/chain.py).
-- Every write is idempotent: redis-py sends a command again when its reply was lost, and a
-- second execution must change nothing. An attempt line is found by its marker (op and number,
-- '{"k":"d2",'): absent, it is appended and counted; present as a write-ahead intent
-- ('"v":"sending"'), it is completed in place (the intent was counted) and keeps the intent's
-- chain position as "qi"; present and complete, the call is a repeat and changes nothing.
-- A final is written once. Whatever is written joins the chain: the client computed the heads
-- after it from the chain state it believes current (ARGV 12); if another writer moved the
-- chain first, nothing is written and the answer carries the current state to recompute from.
-- KEYS: 1 run hash, 2 outcomes hash of the batch, 3 attempts hash of the batch, 4 open-batches set,
--       5 requests-per-second hash, 6 chain hash, 7 compacted-batches hash
-- ARGV: 1 task id, 2 attempt JSON or '', 3 outcome or '', 4 final JSON, 5 batch number,
--       6 batch size, 7 extra counter to bump or '', 8 failure ratio limit, 9 minimum attempted,
--       10 the epoch second the attempt's request was sent in, to count it as an API request of that
--       second ('' when it is not counted), 11 the attempt's line marker or '',
--       12 the chain state the client computed from ('' for none yet), 13 its entry count,
--       14 the state after the attempt alone, 15 after the attempt and the final, 16 after the final
--       alone ('' when an attempt comes with the final: asked for by answering -3 if needed)
-- Returns {code, chain state}: code 0 attempt only, 1 final written, 2 final written and the run
--   is now over, -1 final refused because the task already had one (a duplicate delivery),
--   -3 the chain moved (nothing written; recompute from the state given), -4 the batch is compacted
--   (its run is over; nothing written). A repeat of a final already written by this same write
--   answers 1, or 2 if the run is over.
local status = redis.call('HGET', KEYS[1], 'status')
local over = status == 'finished' or status == 'aborted' or status == 'cancelled'
-- Only an ended run's batches are compacted: the check costs nothing while a run goes on.
if over and redis.call('HEXISTS', KEYS[7], ARGV[5]) == 1 then
  return {-4, ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1])
local prev, s, e, line
local att = nil -- 'append' or 'complete': what this call does to the attempt lines
if ARGV[2] ~= '' then
  prev = redis.call('HGET', KEYS[3], ARGV[1])
  if prev and ARGV[11] ~= '' then
    s = string.find(prev, ARGV[11], 1, true)
  end
  if not s then
    att = 'append'
  else
    e = string.find(prev, '\n', s, true)
    line = string.sub(prev, s, (e or (#prev + 1)) - 1)
    if string.find(line, '"v":"sending"', 1, true) and not string.find(ARGV[2], '"v":"sending"', 1, true) then
      att = 'complete'
    end
  end
end
local fin = false
local repeated = nil
if ARGV[3] ~= '' then
  local had = redis.call('HGET', KEYS[2], ARGV[1])
  if not had then
    fin = true
  else
    local body = (string.gsub(had, ',"q":%d+}$', '}'))
    if body == ARGV[4] then
      repeated = 1 -- or 2 if the run is over (below)
    else
      repeated = -1
    end
  end
end
local chain = redis.call('HGET', KEYS[6], ARGV[5]) or ''
if att or fin then
  -- The head after the final alone is sent only when asked for (the attempt was a repeat): rare.
  if chain ~= ARGV[12] or (fin and not att and ARGV[16] == '') then
    return {-3, chain}
  end
  if over then
    -- A late write (a job that lost its lease): the run's sealed head no longer covers it.
    redis.call('HDEL', KEYS[1], 'chain_head')
  end
  local seq = tonumber(ARGV[13])
  if att == 'append' then
    seq = seq + 1
    local stored = string.sub(ARGV[2], 1, -2) .. ',"q":' .. seq .. '}'
    if prev then
      redis.call('HSET', KEYS[3], ARGV[1], prev .. '\n' .. stored)
    else
      redis.call('HSET', KEYS[3], ARGV[1], stored)
    end
    redis.call('HINCRBY', KEYS[1], 'attempts', 1)
    if ARGV[10] ~= '' then
      redis.call('HINCRBY', KEYS[5], ARGV[10], 1)
    end
  elseif att == 'complete' then
    seq = seq + 1
    local qi = string.match(line, ',"q":(%d+)}$')
    local tail = ',"q":' .. seq .. '}'
    if qi then
      tail = ',"q":' .. seq .. ',"qi":' .. qi .. '}'
    end
    local rest = ''
    if e then
      rest = string.sub(prev, e)
    end
    redis.call('HSET', KEYS[3], ARGV[1], string.sub(prev, 1, s - 1) .. string.sub(ARGV[2], 1, -2) .. tail .. rest)
  end
  if fin then
    seq = seq + 1
    redis.call('HSET', KEYS[2], ARGV[1], string.sub(ARGV[4], 1, -2) .. ',"q":' .. seq .. '}')
  end
  if att and fin then
    chain = ARGV[15]
  elseif att then
    chain = ARGV[14]
  else
    chain = ARGV[16]
  end
  redis.call('HSET', KEYS[6], ARGV[5], chain)
  redis.call('HINCRBY', KEYS[1], 'chain_n', seq - tonumber(ARGV[13]))
end
if ARGV[7] ~= '' and (ARGV[2] == '' or att) then
  redis.call('HINCRBY', KEYS[1], ARGV[7], 1)
end
if ARGV[3] == '' then
  return {0, chain}
end
if repeated == 1 and over then
  return {2, chain}
end
if repeated then
  return {repeated, chain}
end
redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[3], 1)
local finals = redis.call('HINCRBY', KEYS[1], 'finals', 1)
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then
  redis.call('SREM', KEYS[4], ARGV[5])
end
if ARGV[3] == 'failed' and status == 'running' then
  local failed = tonumber(redis.call('HGET', KEYS[1], 'n:failed') or '0')
  local tried = failed + tonumber(redis.call('HGET', KEYS[1], 'n:deleted') or '0')
    + tonumber(redis.call('HGET', KEYS[1], 'n:already_gone') or '0')
  local limit = tonumber(ARGV[8])
  if tried >= tonumber(ARGV[9]) and failed > limit * tried then
    redis.call('HSET', KEYS[1], 'status', 'stopping', 'stop_as', 'aborted', 'reason',
      string.format('failure threshold reached: %d of %d attempted tasks failed (limit %.0f%% after %s)',
        failed, tried, limit * 100, ARGV[9]))
    status = 'stopping'
  end
end
local selected = tonumber(redis.call('HGET', KEYS[1], 'selected') or '-1')
if selected >= 0 and finals >= selected and (status == 'running' or status == 'stopping') then
  local final_status = 'finished'
  if status == 'stopping' then
    final_status = redis.call('HGET', KEYS[1], 'stop_as') or 'aborted'
  end
  redis.call('HSET', KEYS[1], 'status', final_status, 'finished_at', now)
  return {2, chain}
end
return {1, chain}
