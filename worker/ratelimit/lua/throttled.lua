-- The API answered 429: slow the whole fleet. KEYS[1]: the limiter hash.
-- ARGV: rate, burst, pause_us, cut (0..1], floor (req/s), recovery (req/s per s), guard_us, keep_ms,
-- ceiling_cut (0..1]: the ceiling left at this fraction of the rate that drew the 429, climb
-- (req/s per s the ceiling rises by).
-- Answers {1 if the rate was cut else 0, rate after the pause in milli-requests/s}.
local key = KEYS[1]
local rate, burst, pause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cut, floor, recovery = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local guard, keep = tonumber(ARGV[7]), tonumber(ARGV[8])
local ceiling_cut, climb = tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_us()
local f = redis.call('HMGET', key, 'ep', 'r0', 'rt', 'pu', 'ng', 'tn', 'tc', 'rs', 'cl', 'ct')
local r = effective_rate(rate, num(f[2], nil), num(f[3], 0), num(f[8], recovery), now, num(f[9], nil), num(f[10], 0), climb)
local pu = math.max(num(f[4], 0), now + pause)
local r0, did_cut = r, 0
-- Every request in flight when the gateway starts refusing comes back 429; counting each
-- as fresh evidence would halve the rate once per in-flight request (down to the floor at
-- once). One cut per guard period; later 429s in it only extend the pause.
if now >= num(f[5], 0) then
  r0 = math.max(floor, r * cut)
  did_cut = 1
  redis.call('HSET', key, 'ng', fmt(now + math.max(pause, guard)), 'tc', num(f[7], 0) + 1,
    'cl', fmt(math.max(floor, r * ceiling_cut)), 'ct', fmt(pu))
end
-- Nobody goes before pu, and the burst allowance is spent: after the pause the fleet resumes
-- at r0, one request per interval. Outstanding reservations are voided by the new epoch, so
-- tat restarts from pu rather than behind them.
local tat = pu + (burst - 1) * 1000000 / r0
redis.call('HSET', key, 'r0', fmt(r0), 'rt', fmt(pu), 'rs', fmt(recovery), 'pu', fmt(pu), 'tat', fmt(tat),
  'ep', num(f[1], 0) + 1, 'tn', num(f[6], 0) + 1)
redis.call('PEXPIRE', key, keep)
return {did_cut, math.floor(r0 * 1000)}
