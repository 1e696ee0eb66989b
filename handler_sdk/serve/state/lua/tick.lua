-- ARGV: P NOW max_attempts batch. Applies up to `batch` due deadlines: worker leases, ttl, the execution
-- backstop, retention. Each member is removed as it is applied, so whichever replica's clock ticks first applies
-- it and no other does. Returns {deadlines applied, jobs requeued by lapsed leases}.
local max_attempts, batch = tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', DL, '-inf', NOW, 'LIMIT', 0, batch)
local lapsed = 0
for _, m in ipairs(due) do
  redis.call('ZREM', DL, m)
  local kind, rest = string.match(m, '^(%a+)|(.*)$')
  if kind == 'lease' then
    lapsed = lapsed + lapse(rest, max_attempts)
  elseif kind == 'exp' then
    local k = jkey(rest)
    local f = redis.call('HMGET', k, 'status', 'ended', 'retention')
    if f[2] and tonumber(f[2]) + tonumber(f[3]) <= NOW then
      drop(rest, k, f[1])
    end
  else
    local id, stamp = string.match(rest, '^(.*)|(%d+)$')
    local k = jkey(id)
    local f = redis.call('HMGET', k, 'status', 'created', 'requeued', 'ttl', 'started', 'exec')
    if f[1] and not TERMINAL[f[1]] then
      if kind == 'ttl' and tonumber(f[3] or f[2]) + tonumber(f[4]) == tonumber(stamp) then
        time_out(id, k, f[1], 'job exceeded its ttl of ' .. f[4] .. ' ms')
      elseif kind == 'exec' and f[1] == 'IN_PROGRESS' and f[5] == stamp then
        time_out(id, k, f[1], 'job exceeded its executionTimeout of ' .. f[6] .. ' ms')
      end
    end
  end
end
return { #due, lapsed }
