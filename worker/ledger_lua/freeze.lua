-- Freeze a planned run: set its totals and start it, or finish it at once when nothing is left.
-- KEYS: 1 run hash.  ARGV: 1 selected total, 2 status to start in ('running').
-- A run no longer planning (aborted as stale while its planner was merely slow) stays as it is:
-- the answer is its status, and the planner sends nothing.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'planning' then
  return status or 'aborted'
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'selected', ARGV[1], 'planned_at', t[1])
local finals = tonumber(redis.call('HGET', KEYS[1], 'finals') or '0')
if finals >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'status', 'finished', 'finished_at', t[1])
  return 'finished'
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return ARGV[2]
