-- Read-only snapshot for metrics and the CLI. KEYS[1]: the limiter hash.
-- ARGV: rate, recovery (req/s per s), width_s, climb (req/s per s of the ceiling).
-- Answers strings: effective rate, penalty remaining us, circuit, circuit remaining us (of the
-- cool-down), opened count, open streak, 429 reports, rate cuts, window ok, window errors,
-- backlog us, ceiling (req/s, or the rate when none is in force), half-open sample ok, errors.
local key = KEYS[1]
local rate, recovery, width, climb = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_us()
local f = redis.call('HMGET', key, 'tat', 'r0', 'rt', 'pu', 'cs', 'cu', 'ho', 'cn', 'ck', 'tn', 'tc', 'rs', 'cl', 'ct',
  'he')
local cl, ct = num(f[13], nil), num(f[14], 0)
local cs = num(f[5], CLOSED)
local remaining = 0
local ho, he = 0, 0
if cs == OPEN then
  local cu = num(f[6], 0)
  if now >= cu then
    cs = HALF_OPEN  -- its sample has not started: empty
  else
    remaining = cu - now
  end
elseif cs == HALF_OPEN then
  ho, he = num(f[7], 0), num(f[15], 0)
end
local ok, err = window_sum(key, width, math.floor(now / 1000000))
return {
  fmt(effective_rate(rate, num(f[2], nil), num(f[3], 0), num(f[12], recovery), now, cl, ct, climb)),
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
  fmt(effective_rate(rate, nil, 0, 0, now, cl, ct, climb)),
  tostring(ho),
  tostring(he),
}
