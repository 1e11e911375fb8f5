-- Replace a batch's outcomes and attempts hashes by one compressed value (worker/ledger/compact.py),
-- only if nothing was written to the batch since the client read it: every write moves the batch's
-- chain state, so an unchanged state proves the value holds exactly what the hashes hold. A batch
-- whose lease is held (a job may still write) is left for later.
-- KEYS: 1 outcomes hash, 2 attempts hash, 3 the batch's lease, 4 chain hash, 5 compacted hash, 6 run hash
-- ARGV: 1 batch number, 2 the chain state read, 3 the compressed value
-- Returns 1 compacted, 0 left as it is (held, written meanwhile, or compacted already).
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
-- Compacted already (by another process that read the hashes first): never over it with less.
if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 or redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  return 0
end
if (redis.call('HGET', KEYS[4], ARGV[1]) or '') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
local ttl = redis.call('PTTL', KEYS[6])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[5], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
return 1
