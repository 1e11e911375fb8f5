-- Feed request outcomes to the circuit. KEYS[1]: the limiter hash.
-- ARGV: ok (count), errors (count of 5xx), width_s, min_calls, ratio, base_us, max_us, keep_ms,
-- sample_calls (half-open sample size), sample_us (longest half-open sample), outage_ratio
-- (an error ratio this high is an outage: the cool-down doubles).
-- Answers {circuit, opened_count}.
local key = KEYS[1]
local nok, nerr, width = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local min_calls, ratio = tonumber(ARGV[4]), tonumber(ARGV[5])
local base, max_cd, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local sample_calls, sample_us, outage_ratio = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local now = now_us()
local f = redis.call('HMGET', key, 'cs', 'cu', 'cn', 'ck', 'cc', 'ep', 'hs', 'ho', 'he')
local cs = num(f[1], CLOSED)
local cn, ck = num(f[3], 0), num(f[4], 0)
local ep = num(f[6], 0)

local function clear_window()
  redis.call('HDEL', key, unpack(window_fields(width)))
end

local function open(streak)
  -- 2^16 x base is far past any sane maximum; the cap only keeps the power finite.
  streak = math.min(streak, 16)
  local cooldown = math.min(max_cd, base * 2 ^ streak)
  local cu = now + cooldown
  cs, cn, ep = OPEN, cn + 1, ep + 1
  -- The new epoch voids every reservation, and tat restarts at the end of the cool-down: the
  -- half-open sample starts from an empty queue, not behind the slots of the voided waiters.
  redis.call('HSET', key, 'cs', cs, 'cu', fmt(cu), 'cn', cn, 'ck', streak, 'ep', ep, 'tat', fmt(cu),
    'ho', 0, 'he', 0)
  -- Results of requests sent before the opening must not re-open the circuit after it closes.
  clear_window()
end

-- The cool-down doubles only for what looks like an outage (~all errors). A brownout that
-- crossed the opening ratio keeps the cool-down it had: doubling it would turn a partial
-- failure into a near-stop (up to circuit_cooldown_max_s of nothing at a time).
local function next_streak(ok, err)
  if err >= outage_ratio * (ok + err) then
    return ck + 1
  end
  return ck
end

if cs == OPEN and now >= num(f[2], 0) then
  cs = HALF_OPEN
  start_sample(key, now)
  f[7], f[8], f[9] = fmt(now), '0', '0'
end

if cs == HALF_OPEN then
  local ho, he = num(f[8], 0) + nok, num(f[9], 0) + nerr
  local n = ho + he
  if n >= sample_calls or (n > 0 and now - num(f[7], now) >= sample_us) then
    -- The sample is complete (or has run its time): it decides, by the same ratio that opens.
    if he >= ratio * n then
      open(next_streak(ho, he))
    else
      -- Reservations taken at the half-open fraction are at most the horizon ahead (see
      -- acquire.lua), so the fleet is back at full rate within it.
      cs = CLOSED
      redis.call('HSET', key, 'cs', cs, 'cc', fmt(now))
      redis.call('HDEL', key, 'hs', 'ho', 'he')
      clear_window()
    end
  elseif he >= ratio * sample_calls then
    -- Enough errors that the full sample cannot come in under the ratio: open now, so that an
    -- outage costs only this many requests per cool-down.
    open(next_streak(ho, he))
  else
    redis.call('HSET', key, 'ho', ho, 'he', he)
  end
elseif cs == CLOSED then
  local sec = math.floor(now / 1000000)
  local field = 'w' .. string.format('%d', sec % width)
  local o, e = nok, nerr
  local cur = redis.call('HGET', key, field)
  if cur then
    local s, co, ce = string.match(cur, '^(%d+):(%d+):(%d+)$')
    if tonumber(s) == sec then
      o, e = o + tonumber(co), e + tonumber(ce)
    end
  end
  redis.call('HSET', key, field, string.format('%d:%d:%d', sec, o, e))
  if nerr > 0 then
    local ok, err = window_sum(key, width, sec)
    if ok + err >= min_calls and err >= ratio * (ok + err) then
      -- Opening again soon after the last close is the same outage: double the cool-down (if
      -- it is one, see next_streak). Otherwise start again from the base cool-down.
      local streak = 0
      local cc = num(f[5], nil)
      if cc and now - cc < max_cd then
        streak = next_streak(ok, err)
      end
      open(streak)
    end
  end
end
-- While open, results of requests sent before the opening say nothing new: ignored.
redis.call('PEXPIRE', key, keep)
return {cs, cn}
