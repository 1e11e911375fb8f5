-- Record one attempt and/or the one final outcome of a task, atomically with the run's counters.
-- Every write is idempotent: redis-py sends a command again when its reply was lost, and a
-- second execution must change nothing. An attempt line is found by its marker (op and number,
-- '{"k":"d2",'): absent, it is appended and counted; present as a write-ahead intent
-- ('"v":"sending"'), it is completed in place (the intent was counted); present and complete,
-- the call is a repeat and changes nothing. A final is written once (HSETNX).
-- KEYS: 1 run hash, 2 outcomes hash of the batch, 3 attempts hash of the batch, 4 open-batches set,
--       5 requests-per-second hash
-- ARGV: 1 task id, 2 attempt JSON or '', 3 outcome or '', 4 final JSON, 5 batch number,
--       6 batch size, 7 extra counter to bump or '', 8 failure ratio limit, 9 minimum attempted,
--       10 count this attempt as an API request ('1' or '0'), 11 the attempt's line marker or ''
-- Returns: 0 attempt only, 1 final written, 2 final written and the run is now over,
--          -1 final refused because the task already had one (a duplicate delivery).
--          A repeat of a final already written by this same write answers 1, or 2 if the run is over.
local t = redis.call('TIME')
local now = tonumber(t[1])
local fresh = true -- this call added or completed the attempt line (not a repeat)
if ARGV[2] ~= '' then
  local prev = redis.call('HGET', KEYS[3], ARGV[1])
  local s = nil
  if prev and ARGV[11] ~= '' then
    s = string.find(prev, ARGV[11], 1, true)
  end
  if not s then
    if prev then
      redis.call('HSET', KEYS[3], ARGV[1], prev .. '\n' .. ARGV[2])
    else
      redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
    end
    redis.call('HINCRBY', KEYS[1], 'attempts', 1)
    if ARGV[10] == '1' then
      redis.call('HINCRBY', KEYS[5], tostring(now), 1)
    end
  else
    local e = string.find(prev, '\n', s, true)
    local line = string.sub(prev, s, (e or (#prev + 1)) - 1)
    if string.find(line, '"v":"sending"', 1, true) and not string.find(ARGV[2], '"v":"sending"', 1, true) then
      local tail = ''
      if e then
        tail = string.sub(prev, e)
      end
      redis.call('HSET', KEYS[3], ARGV[1], string.sub(prev, 1, s - 1) .. ARGV[2] .. tail)
    else
      fresh = false
    end
  end
end
if ARGV[7] ~= '' and fresh then
  redis.call('HINCRBY', KEYS[1], ARGV[7], 1)
end
if ARGV[3] == '' then
  return 0
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[4]) == 0 then
  if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[4] then
    local st = redis.call('HGET', KEYS[1], 'status')
    if st == 'finished' or st == 'aborted' or st == 'cancelled' then
      return 2
    end
    return 1
  end
  return -1
end
redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[3], 1)
local finals = redis.call('HINCRBY', KEYS[1], 'finals', 1)
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then
  redis.call('SREM', KEYS[4], ARGV[5])
end
local status = redis.call('HGET', KEYS[1], 'status')
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
  return 2
end
return 1
