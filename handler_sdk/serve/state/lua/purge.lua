-- ARGV: P NOW. Deletes every queued job; returns how many. Walks the two queues only (rate-limited route).
local n = 0
for _, q in ipairs({ Q, QLOW }) do
  for _, id in ipairs(redis.call('LRANGE', q, 0, -1)) do
    local k = jkey(id)
    if redis.call('HGET', k, 'status') == 'IN_QUEUE' then
      drop(id, k, 'IN_QUEUE')
      n = n + 1
    end
  end
end
redis.call('DEL', Q, QLOW)
return n
