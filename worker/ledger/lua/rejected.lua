-- Record refused input lines, once: each line is a selected entry whose outcome is 'rejected'.
-- KEYS: 1 rejected list, 2 run hash, 3 set of tokens already written.
-- ARGV: 1 this write's token, 2.. the lines (JSON).
-- Returns the number of lines stored: 0 when this token was written before (a retried command).
if redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return 0
end
local n = #ARGV - 1
for i = 2, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('HINCRBY', KEYS[2], 'n:rejected', n)
redis.call('HINCRBY', KEYS[2], 'finals', n)
return n
