-- Undo a batch's compaction (worker/ledger/compact.py) for a late write: a job that lost its lease
-- may still record an attempt after the run ended, and record.lua writes only the live hashes.
-- Only if the compacted value is still the one the client decoded; the hashes expire with the run.
-- KEYS: 1 outcomes hash, 2 attempts hash, 3 compacted hash, 4 run hash
-- ARGV: 1 batch number, 2 the compacted value decoded, 3 number of finals, then task/final pairs,
--       then task/attempt-lines pairs.  Returns 1 expanded, 0 not (the value changed or is gone).
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
local nf = tonumber(ARGV[3])
local i = 4
for _ = 1, nf do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HDEL', KEYS[3], ARGV[1])
local ttl = redis.call('PTTL', KEYS[4])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
