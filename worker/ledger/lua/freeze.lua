-- Freeze a planned run: set its totals and start it, or finish it at once when nothing is left.
-- KEYS: 1 run hash.  ARGV: 1 selected total, 2 status to start in ('running').
-- Returns {status, changed}: changed is 1 when this call froze the run.
-- A run no longer planning (aborted as stale while its planner was merely slow) stays as it is:
-- the answer is its status, and the planner sends nothing.
-- A run stopped while planning ('stopping' and no totals yet) is frozen too, so its totals are
-- known, and stays 'stopping' until its planned tasks are recorded aborted (or ends at once with
-- its stop status when there are none): otherwise nothing would ever end it.
local f = redis.call('HMGET', KEYS[1], 'status', 'selected', 'stop_as')
local status = f[1]
local stopped_while_planning = status == 'stopping' and not f[2]
if status ~= 'planning' and not stopped_while_planning then
  return {status or 'aborted', 0}
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'selected', ARGV[1], 'planned_at', t[1])
local finals = tonumber(redis.call('HGET', KEYS[1], 'finals') or '0')
local done = 'finished'
if stopped_while_planning then
  done = f[3] or 'aborted'
end
if finals >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'status', done, 'finished_at', t[1])
  return {done, 1}
end
if stopped_while_planning then
  return {'stopping', 1}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
return {ARGV[2], 1}
