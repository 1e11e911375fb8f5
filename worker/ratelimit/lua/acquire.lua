-- Take (or reserve) one slot. KEYS[1]: the limiter hash.
-- ARGV: rate (req/s), burst, budget_us (longest acceptable wait), recovery (req/s gained per
-- second after a 429), half_fraction (share of the rate admitted while half-open), keep_ms
-- (idle lifetime of the key), start_fraction and start_slope (req/s per s) of the ramp after an
-- idle spell (0: no ramp), idle_us (how long without a request makes a spell idle), climb
-- (req/s per s the ceiling a 429 leaves rises by), horizon_us (how far ahead a half-open
-- slot may be reserved), and optionally bank (most slots to take, >1 to bank), bank_us (how
-- far ahead a banked slot may be), grace_us (how late after its time a banked slot may still be
-- handed out, at most the burst tolerance).
-- Answers {code, wait_us, epoch, circuit}:
--   0  go now;
--   1  a slot wait_us ahead is reserved for the caller: sleep, then go unless the epoch moved
--      (a 429 or an opening or closing circuit voids every reservation);
--   2  the wait exceeds the budget: nothing was taken;
--   3  the circuit holds every request: sleep wait_us, then ask again (nothing was taken).
-- With bank > 1, a code 0 or 1 answer may carry more slots for the caller's process:
-- {code, wait_us, epoch, circuit, grace_us, wait_us of slot 2, wait_us of slot 3, ...}.
local key = KEYS[1]
local rate, burst, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local recovery, half_fraction, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local start_fraction, start_slope, idle = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local climb, horizon = tonumber(ARGV[10]), tonumber(ARGV[11])
local bank, bank_us, grace_us = tonumber(ARGV[12] or '1'), tonumber(ARGV[13] or '0'), tonumber(ARGV[14] or '0')
local now = now_us()
local f = redis.call('HMGET', key, 'tat', 'ep', 'r0', 'rt', 'cs', 'cu', 'rs', 'cl', 'ct')
local ep = num(f[2], 0)
local cs = num(f[5], CLOSED)

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
  cs = HALF_OPEN
  start_sample(key, now)
end

-- GCRA: tat is the theoretical arrival time of the next request at the steady rate; a
-- request may go once it is no more than (burst - 1) intervals ahead of now.
local r0, rt, slope = num(f[3], nil), num(f[4], 0), num(f[7], recovery)
local effective = effective_rate(rate, r0, rt, slope, now, num(f[8], nil), num(f[9], 0), climb)
-- Slow start: the first requests after an idle spell leave late more often than later ones
-- (new connections, a TLS handshake, processes and threads starting their first job), and one
-- that arrives late next to on-time ones puts rate + 1 into the gateway's second. Starting at
-- start_fraction of the rate and climbing back within a second or two gives them room.
if start_fraction > 0 and (not f[1] or now - tonumber(f[1]) > idle) and effective > rate * start_fraction then
  effective = rate * start_fraction
  redis.call('HSET', key, 'r0', fmt(effective), 'rt', fmt(now), 'rs', fmt(start_slope))
end
if cs == HALF_OPEN then
  -- Half-open: a sample at a fraction of the rate, without the burst allowance, decides
  -- (record.lua). A brownout keeps moving at that fraction while the sample is taken; an
  -- outage costs only the sample's few requests before the circuit opens again.
  effective = effective * half_fraction
  burst = 1
end
local interval = 1000000 / effective
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
if cs == HALF_OPEN and wait > horizon then
  -- No reservation deep into a half-open queue at the slow spacing: when the sample closes the
  -- circuit, the waiters would still sleep out the slow slots. Ask again nearer the time.
  return {3, math.ceil(math.min(wait, horizon)), ep, cs}
end
if cs == CLOSED and bank > 1 then
  -- A bank: up to `bank` consecutive slots for the caller's process, each no more than bank_us
  -- ahead, handed out there at their times (one round trip for several requests). A banked slot
  -- may be handed out up to grace after its time, so each slot j is counted at
  -- base + j * interval with base at least now + grace: a slot used anywhere in
  -- [its time, its time + grace] is then no earlier than tolerance allows and no later than
  -- counted (grace is at most the burst tolerance), so the GCRA's bound holds exactly.
  local tau = (burst - 1) * interval
  local grace = math.min(grace_us, tau)
  local base = tat
  if base < now + grace then
    base = now + grace
  end
  local answer = {wait == 0 and 0 or 1, math.ceil(wait), ep, cs, math.floor(grace)}
  local n = 1
  while n < bank do
    local w = base + n * interval - tau - now
    if w < 1 then
      w = 0
    end
    if w > bank_us or w > budget then
      break
    end
    answer[#answer + 1] = math.ceil(w)
    n = n + 1
  end
  if n > 1 then
    redis.call('HSET', key, 'tat', fmt(base + n * interval))
    redis.call('PEXPIRE', key, keep)
    return answer
  end
end
-- Reserving (instead of answering "come back later") lets each waiter sleep once, in arrival
-- order: no herd of waiters racing for every slot, and no slot lost to a late wake-up.
redis.call('HSET', key, 'tat', fmt(tat + interval))
redis.call('PEXPIRE', key, keep)
if wait == 0 then
  return {0, 0, ep, cs}
end
return {1, math.ceil(wait), ep, cs}
