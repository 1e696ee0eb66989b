-- ARGV: P NOW k. A replica got k wakes it cannot use (no take of that worker waiting there, a take that filled
-- its slots, a replica shutting down): each goes on to the next idle taker while work is still queued. Returns
-- how many were woken.
local left = math.min(tonumber(ARGV[3]), redis.call('LLEN', Q) + redis.call('LLEN', QLOW))
local n = 0
for _ = 1, left do
  if wake_one() == 0 then break end
  n = n + 1
end
return n
