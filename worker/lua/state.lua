-- Read-only snapshot for metrics and the CLI. KEYS[1]: the limiter hash.
-- ARGV: rate, recovery (req/s per s), width_s.
-- Answers strings: effective rate, penalty remaining us, circuit, circuit remaining us,
-- opened count, open streak, 429 reports, rate cuts, window ok, window errors, backlog us.
local key = KEYS[1]
local rate, recovery, width = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_us()
local f = redis.call('HMGET', key, 'tat', 'r0', 'rt', 'pu', 'cs', 'cu', 'hn', 'cn', 'ck', 'tn', 'tc')
local cs = num(f[5], CLOSED)
local remaining = 0
if cs == OPEN then
  local cu = num(f[6], 0)
  if now >= cu then
    cs = HALF_OPEN
  else
    remaining = cu - now
  end
end
if cs == HALF_OPEN then
  remaining = math.max(0, num(f[7], 0) - now)
end
local ok, err = window_sum(key, width, math.floor(now / 1000000))
return {
  fmt(effective_rate(rate, num(f[2], nil), num(f[3], 0), recovery, now)),
  fmt(math.max(0, num(f[4], 0) - now)),
  tostring(cs),
  fmt(remaining),
  tostring(num(f[8], 0)),
  tostring(num(f[9], 0)),
  tostring(num(f[10], 0)),
  tostring(num(f[11], 0)),
  tostring(ok),
  tostring(err),
  fmt(math.max(0, num(f[1], 0) - now)),
}
