-- The write-ahead gate: the last step before a DELETE leaves, in one atomic Redis step.
-- It records that the DELETE is about to be sent (the intent line, which the answer later
-- completes) only if the run is still running, the batch's lease is still this job's, and no
-- live hold names the task or its share. Otherwise nothing is written and nothing may be sent.
-- The intent joins the batch's hash chain in the same step (see record.lua and
-- worker/ledger/chain.py): compare-and-set of the chain state the client computed from.
-- KEYS: 1 run hash, 2 attempts hash of the batch, 3 the batch's lease, 4 requests-per-second hash,
--       5 protected tasks set, 6 protected shares set, 7 chain hash
-- ARGV: 1 task id, 2 intent JSON, 3 the intent's line marker ('{"k":"d2",'), 4 holder, 5 share id,
--       6 batch number, 7 the chain state computed from ('' for none yet), 8 its entry count,
--       9 the state after this intent
-- Returns {code, chain state}: 1 recorded (or already recorded by an earlier try of this same
--   write): send; -1 the run is not running; -2 the lease is not ours; -3 share held; -4 task held;
--   -9 the chain moved (nothing written; recompute from the state given).
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return {-1, ''}
end
if redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return {-2, ''}
end
if redis.call('SISMEMBER', KEYS[6], ARGV[5]) == 1 then
  return {-3, ''}
end
if redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1 then
  return {-4, ''}
end
local chain = redis.call('HGET', KEYS[7], ARGV[6]) or ''
local prev = redis.call('HGET', KEYS[2], ARGV[1])
if prev and string.find(prev, ARGV[3], 1, true) then
  return {1, chain} -- a retried write whose first reply was lost: already recorded, counted once
end
if chain ~= ARGV[7] then
  return {-9, chain}
end
local stored = string.sub(ARGV[2], 1, -2) .. ',"q":' .. (tonumber(ARGV[8]) + 1) .. '}'
if prev then
  redis.call('HSET', KEYS[2], ARGV[1], prev .. '\n' .. stored)
else
  redis.call('HSET', KEYS[2], ARGV[1], stored)
end
redis.call('HSET', KEYS[7], ARGV[6], ARGV[9])
redis.call('HINCRBY', KEYS[1], 'chain_n', 1)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local t = redis.call('TIME')
redis.call('HINCRBY', KEYS[4], t[1], 1)
return {1, ARGV[9]}
