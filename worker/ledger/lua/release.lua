-- Release a held run: it starts running, and its jobs may be sent.
-- KEYS: 1 run hash.  ARGV: 1 who approved (for the record), 2 how ('apply', 'approve'),
--       3 this approval's token (unique per call).
-- Returns 1 if the run is running by this request (or by the same request before: redis-py
-- resends a command whose reply was lost, token and all), 0 if it was not held (the caller says
-- what it is): a second approval, even by the same person, releases nothing twice.
local f = redis.call('HMGET', KEYS[1], 'status', 'approval_token')
if f[1] == 'held' then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'status', 'running', 'approved_by', ARGV[1], 'approved_how', ARGV[2],
    'approved_at', t[1], 'approval_token', ARGV[3])
  return 1
end
if f[1] == 'running' and f[2] == ARGV[3] then
  return 1
end
return 0
