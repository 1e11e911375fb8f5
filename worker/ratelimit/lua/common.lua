-- Prepended to every limiter script by worker/ratelimit/scripts.py (Lua scripts cannot import).
-- Times are microseconds of the Redis server's clock: every host reads the same clock, so
-- skew between worker hosts cannot bend the limit.
local CLOSED, OPEN, HALF_OPEN = 0, 1, 2

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- HMGET answers false, not nil, for a missing field.
local function num(value, default)
  if value then
    return tonumber(value)
  end
  return default
end

-- Fractional microseconds are kept: rounding the interval at 3000/s (333.33 us) to whole
-- microseconds would drift the rate by 0.1 %.
local function fmt(x)
  return string.format('%.17g', x)
end

-- The rate in force at `at`: after a 429 (or an idle spell, see acquire.lua) the fleet runs at
-- r0 until rt (the end of the pause), then gains `slope` requests/s every second until it is
-- back at the configured rate. `slope` is the curve's own (field rs) when it has one.
-- A 429 also leaves a ceiling cl (set at ct) a little under the rate that drew it, which rises
-- by `climb` requests/s per second: a limit set above the gateway's stops drawing a 429 every
-- time the recovery climbs back, and a gateway that allows more again is found again.
local function effective_rate(rate, r0, rt, slope, at, cl, ct, climb)
  local r = rate
  if r0 then
    r = r0
    if at > rt then
      r = r0 + slope * (at - rt) / 1000000
    end
  end
  if cl then
    local ceiling = cl
    if at > ct then
      ceiling = cl + climb * (at - ct) / 1000000
    end
    if r > ceiling then
      r = ceiling
    end
  end
  if r > rate then
    r = rate
  end
  return r
end

-- The 5xx window is a ring of one-second buckets, fields w0..w{width-1} of the same hash,
-- each "second:ok:errors": fixed memory, and one key keeps every script single-slot.
local function window_fields(width)
  local names = {}
  for i = 0, width - 1 do
    names[#names + 1] = 'w' .. i
  end
  return names
end

local function window_sum(key, width, sec)
  local values = redis.call('HMGET', key, unpack(window_fields(width)))
  local ok, err = 0, 0
  for i = 1, width do
    local v = values[i]
    if v then
      local s, o, e = string.match(v, '^(%d+):(%d+):(%d+)$')
      s = tonumber(s)
      if s and s > sec - width and s <= sec then
        ok = ok + tonumber(o)
        err = err + tonumber(e)
      end
    end
  end
  return ok, err
end

-- The cool-down is over: the circuit is half-open and a new sample starts (hs: its start,
-- ho/he: its successes and server errors).
local function start_sample(key, now)
  redis.call('HSET', key, 'cs', HALF_OPEN, 'hs', fmt(now), 'ho', 0, 'he', 0)
end
