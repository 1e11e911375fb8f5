-- Take (or reserve) one slot. KEYS[1]: the limiter hash.
-- ARGV: rate (req/s), burst, budget_us (longest acceptable wait), recovery (req/s gained per
-- second after a 429), trial_us (half-open spacing), keep_ms (idle lifetime of the key).
-- Answers {code, wait_us, epoch, circuit}:
--   0  go now;
--   1  a slot wait_us ahead is reserved for the caller: sleep, then go unless the epoch moved
--      (a 429 or an opening circuit voids every reservation);
--   2  the wait exceeds the budget: nothing was taken;
--   3  the circuit holds every request: sleep wait_us, then ask again (nothing was taken).
local key = KEYS[1]
local rate, burst, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local recovery, trial, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_us()
local f = redis.call('HMGET', key, 'tat', 'ep', 'r0', 'rt', 'cs', 'cu', 'hn')
local ep = num(f[2], 0)
local cs = num(f[5], CLOSED)
local hn = num(f[7], 0)

local function held(until_us)
  local wait = math.ceil(until_us - now)
  if wait > budget then
    return {2, wait, ep, cs}
  end
  return {3, wait, ep, cs}
end

if cs == OPEN then
  local cu = num(f[6], 0)
  if now < cu then
    return held(cu)
  end
  cs, hn = HALF_OPEN, now
  redis.call('HSET', key, 'cs', cs, 'hn', fmt(hn))
end
if cs == HALF_OPEN and now < hn then
  return held(hn)
end

-- GCRA: tat is the theoretical arrival time of the next request at the steady rate; a
-- request may go once it is no more than (burst - 1) intervals ahead of now.
local interval = 1000000 / effective_rate(rate, num(f[3], nil), num(f[4], 0), recovery, now)
local tat = num(f[1], now)
if tat < now then
  tat = now
end
local wait = tat - (burst - 1) * interval - now
if wait < 1 then
  wait = 0
end
if wait > budget then
  return {2, math.ceil(wait), ep, cs}
end
-- Reserving (instead of answering "come back later") lets each waiter sleep once, in arrival
-- order: no herd of waiters racing for every slot, and no slot lost to a late wake-up.
redis.call('HSET', key, 'tat', fmt(tat + interval))
if cs == HALF_OPEN then
  redis.call('HSET', key, 'hn', fmt(now + wait + trial))
end
redis.call('PEXPIRE', key, keep)
if wait == 0 then
  return {0, 0, ep, cs}
end
return {1, math.ceil(wait), ep, cs}
