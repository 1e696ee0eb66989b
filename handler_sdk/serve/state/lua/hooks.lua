-- The completed-webhook outbox, shared by the replicas. ARGV: P NOW op ...
--   claim lease_ms n : up to n due deliveries, each leased to the caller until NOW + lease_ms (a replica that
--                      dies holding one leaves it to come due again for another). Returns {id, record...} per
--                      job; a job gone meanwhile (purged, expired) is dropped from the outbox.
--   ack id           : delivered, or given up after its attempts: out of the outbox.
local op = ARGV[3]
if op == 'claim' then
  local lease, n = tonumber(ARGV[4]), tonumber(ARGV[5])
  local out = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', HOOKS, '-inf', NOW, 'LIMIT', 0, n)) do
    local rec = redis.call('HGETALL', jkey(id))
    if #rec == 0 then
      redis.call('ZREM', HOOKS, id)
    else
      redis.call('ZADD', HOOKS, NOW + lease, id)
      out[#out + 1] = { id, rec }
    end
  end
  return out
elseif op == 'ack' then
  return redis.call('ZREM', HOOKS, ARGV[4])
end
return redis.error_reply('unknown op ' .. op)
