-- ARGV: P NOW id. FAILED or TIMED_OUT -> IN_QUEUE, as if submitted now (its ttl starts over). Returns 1,
-- {'conflict', status}, or false if unknown.
local id = ARGV[3]
local k = jkey(id)
local st = redis.call('HGET', k, 'status')
if not st then return false end
if st ~= 'FAILED' and st ~= 'TIMED_OUT' then return { 'conflict', st } end
set_status(k, st, 'IN_QUEUE')
redis.call('HINCRBY', k, 'retries', 1)
redis.call('HDEL', k, 'started', 'ended', 'output', 'error', 'details', 'worker')
redis.call('HSET', k, 'cursor', 0, 'requeued', NOW)
redis.call('DEL', skey(id))
local f = redis.call('HMGET', k, 'ttl', 'low')
if f[1] then
  local due = NOW + tonumber(f[1])
  redis.call('ZADD', DL, due, 'ttl|' .. id .. '|' .. due)
end
redis.call('RPUSH', f[2] == '1' and QLOW or Q, id)
changed(id, 'IN_QUEUE')
wake_for_work()
return 1
