-- Feed request outcomes to the circuit. KEYS[1]: the limiter hash.
-- ARGV: ok (count), errors (count of 5xx), width_s, min_calls, ratio, base_us, max_us, keep_ms.
-- Answers {circuit, opened_count}.
local key = KEYS[1]
local nok, nerr, width = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local min_calls, ratio = tonumber(ARGV[4]), tonumber(ARGV[5])
local base, max_cd, keep = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_us()
local f = redis.call('HMGET', key, 'cs', 'cu', 'cn', 'ck', 'cc', 'ep')
local cs = num(f[1], CLOSED)
local cn, ck = num(f[3], 0), num(f[4], 0)

local function clear_window()
  redis.call('HDEL', key, unpack(window_fields(width)))
end

local function open(streak)
  -- 2^16 x base is far past any sane maximum; the cap only keeps the power finite.
  streak = math.min(streak, 16)
  local cooldown = math.min(max_cd, base * 2 ^ streak)
  cs, cn = OPEN, cn + 1
  redis.call('HSET', key, 'cs', cs, 'cu', fmt(now + cooldown), 'cn', cn, 'ck', streak,
    'ep', num(f[6], 0) + 1)
  -- Results of requests sent before the opening must not re-open the circuit after it closes.
  clear_window()
end

if cs == OPEN and now >= num(f[2], 0) then
  cs = HALF_OPEN
  redis.call('HSET', key, 'cs', cs, 'hn', fmt(now))
end

if cs == HALF_OPEN then
  if nerr > 0 then
    open(ck + 1)
  elseif nok > 0 then
    cs = CLOSED
    redis.call('HSET', key, 'cs', cs, 'cc', fmt(now))
    clear_window()
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
      -- Opening again soon after the last close is the same outage: double the cool-down.
      local streak = 0
      local cc = num(f[5], nil)
      if cc and now - cc < max_cd then
        streak = ck + 1
      end
      open(streak)
    end
  end
end
-- While open, results of requests sent before the opening say nothing new: ignored.
redis.call('PEXPIRE', key, keep)
return {cs, cn}
