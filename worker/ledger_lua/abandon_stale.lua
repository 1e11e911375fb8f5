-- Abort a run still planning whose planner shows no sign of life (killed mid-plan): nothing was
-- sent for it, and without this it would stay "planning" for ever and keep its trigger claimed.
-- KEYS: 1 run hash.  ARGV: 1 stale after (s), 2 reason.  Returns 1 if the run was aborted.
local t = tonumber(redis.call('TIME')[1])
local f = redis.call('HMGET', KEYS[1], 'status', 'plan_beat', 'created_at')
if f[1] ~= 'planning' then
  return 0
end
local beat = tonumber(f[2] or f[3] or '0') or 0
if t - beat < tonumber(ARGV[1]) then
  return 0
end
local finals = tonumber(redis.call('HGET', KEYS[1], 'finals') or '0')
redis.call('HSET', KEYS[1], 'status', 'aborted', 'reason', ARGV[2], 'selected', finals, 'finished_at', t)
return 1
