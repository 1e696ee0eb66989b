-- The worker calls that are not a job transition. ARGV: P NOW op worker ...
--   ping lease_ms init id...  : alive; told to stop jobs it runs but no longer holds. Returns 1.
--   stops                     : the jobs it must stop, cleared as read.
--   hand_back id...           : jobs it will not finish queue again at the front (no attempt counted).
--   leave max_attempts        : gone; its jobs are lost leases. Returns how many.
local op, wid = ARGV[3], ARGV[4]
if op == 'ping' then
  seen(wid, tonumber(ARGV[5]), ARGV[6])
  for i = 7, #ARGV do
    local f = redis.call('HMGET', jkey(ARGV[i]), 'status', 'worker')
    if f[1] and (f[1] == 'CANCELLED' or f[1] == 'TIMED_OUT' or (not TERMINAL[f[1]] and f[2] ~= wid)) then
      redis.call('SADD', stopkey(wid), ARGV[i])
    end
  end
  if redis.call('EXISTS', stopkey(wid)) == 1 then redis.call('PUBLISH', CH, 'w:' .. wid) end
  return 1
elseif op == 'stops' then
  local ids = redis.call('SMEMBERS', stopkey(wid))
  redis.call('DEL', stopkey(wid))
  return ids
elseif op == 'hand_back' then
  local n = 0
  for i = 5, #ARGV do
    local k = jkey(ARGV[i])
    if leased(k, wid) == nil then
      queue_again(ARGV[i], k, true)
      n = n + 1
    end
  end
  return n
elseif op == 'leave' then
  return lapse(wid, tonumber(ARGV[5]))
end
return redis.error_reply('unknown op ' .. op)
