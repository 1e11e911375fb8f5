-- End a run still planning whose planner shows no sign of life (killed mid-plan): nothing was
-- sent for it, and without this it would stay "planning" for ever and keep its trigger claimed.
-- A run stopped while planning ('stopping', no totals yet) whose planner died is ended the same
-- way, with the status it was stopped as.
-- KEYS: 1 run hash.  ARGV: 1 stale after (s), 2 reason.  Returns 1 if the run was ended.
local t = tonumber(redis.call('TIME')[1])
local f = redis.call('HMGET', KEYS[1], 'status', 'plan_beat', 'created_at', 'selected', 'stop_as')
local stopped_while_planning = f[1] == 'stopping' and not f[4]
if f[1] ~= 'planning' and not stopped_while_planning then
  return 0
end
local beat = tonumber(f[2] or f[3] or '0') or 0
if t - beat < tonumber(ARGV[1]) then
  return 0
end
local finals = tonumber(redis.call('HGET', KEYS[1], 'finals') or '0')
if stopped_while_planning then
  redis.call('HSET', KEYS[1], 'status', f[5] or 'aborted', 'selected', finals, 'finished_at', t)
  return 1
end
redis.call('HSET', KEYS[1], 'status', 'aborted', 'reason', ARGV[2], 'selected', finals, 'finished_at', t)
return 1
