-- ARGV: P NOW group per_window window_ms. serve/limits.py's exact window, shared by every replica: the last
-- per_window admitted stamps sit in a list (newest first), and a request is admitted when fewer are there or the
-- oldest is a full window ago. Returns -1 when admitted, else the ms until the oldest leaves the window.
local key = P .. 'rl:' .. ARGV[3]
local per, window = tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('LLEN', key) >= per then
  local oldest = tonumber(redis.call('LINDEX', key, -1))
  if NOW - oldest < window then return window - (NOW - oldest) end
end
redis.call('LPUSH', key, ARGV[2])
redis.call('LTRIM', key, 0, per - 1)
return -1
