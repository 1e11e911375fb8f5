-- Ask a running run to stop: every task without an outcome will end as 'aborted'.
-- A run still planning is marked the same way; its planner sees it at its next check, stops
-- reading the inventory, and freeze.lua ends the run (see there).
-- A held run (planned, never dispatched) is marked the same way and answers 2: it has no job to
-- record its tasks aborted, so the caller does (Audit.request_stop), which ends the run.
-- KEYS: 1 run hash.  ARGV: 1 final status ('aborted' or 'cancelled'), 2 reason,
--       3 'held' to stop the run only if it is still held (the expiry of an unapproved run must
--       not stop one approved a moment ago), or ''.
-- Returns 1 if the run is (now) stopping by this request, 2 if it was held, 0 if it was not running.
local status = redis.call('HGET', KEYS[1], 'status')
if ARGV[3] == 'held' and status ~= 'held' and not (status == 'stopping'
    and redis.call('HGET', KEYS[1], 'was_held') == '1') then
  return 0
end
if status == 'running' or status == 'planning' or status == 'held' then
  redis.call('HSET', KEYS[1], 'status', 'stopping', 'stop_as', ARGV[1], 'reason', ARGV[2])
  if status == 'held' then
    redis.call('HSET', KEYS[1], 'was_held', '1')
    return 2
  end
  return 1
end
-- The same request again (redis-py resends a command whose reply was lost): it did stop the run.
if status == 'stopping' and redis.call('HGET', KEYS[1], 'stop_as') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'reason') == ARGV[2] then
  if redis.call('HGET', KEYS[1], 'was_held') == '1' then
    return 2
  end
  return 1
end
return 0
