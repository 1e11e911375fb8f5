-- Release a held run: it starts running, and its jobs may be sent.
-- KEYS: 1 run hash.  ARGV: 1 who approved (for the record), 2 how ('apply', 'approve').
-- Returns 1 if the run is running by this request (or by the same request before: redis-py
-- resends a command whose reply was lost), 0 if it was not held (the caller says what it is).
local f = redis.call('HMGET', KEYS[1], 'status', 'approved_by', 'approved_how')
if f[1] == 'held' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'status', 'running', 'approved_by', ARGV[1], 'approved_how', ARGV[2],
    'approved_at', t[1])
  return 1
end
if f[1] == 'running' and f[2] == ARGV[1] and f[3] == ARGV[2] then
  return 1
end
return 0
