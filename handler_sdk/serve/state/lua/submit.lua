-- ARGV: P NOW id input sync low ttl exec retention meta sse idem_key fingerprint hook. Returns 1, or 0 when the id
-- is taken, or {job id, fingerprint} when the Idempotency-Key names a job still retained (nothing is written).
local id = ARGV[3]
local k = jkey(id)
if redis.call('EXISTS', k) == 1 then return 0 end
local key = ARGV[12]
if key and key ~= '' then
  local hit = redis.call('HMGET', ikey(key), 'id', 'fp')
  if hit[1] and redis.call('HGET', jkey(hit[1]), 'idem') == key then return { hit[1], hit[2] } end
  redis.call('HSET', ikey(key), 'id', id, 'fp', ARGV[13])
  redis.call('HSET', k, 'idem', key)
end
if ARGV[14] == '1' then redis.call('HSET', k, 'hook', '1') end
redis.call('HSET', k, 'status', 'IN_QUEUE', 'created', NOW, 'input', ARGV[4], 'sync', ARGV[5], 'low', ARGV[6],
  'retention', ARGV[9], 'retries', 0, 'cursor', 0)
if ARGV[7] ~= '' then
  redis.call('HSET', k, 'ttl', ARGV[7])
  local due = NOW + tonumber(ARGV[7])
  redis.call('ZADD', DL, due, 'ttl|' .. id .. '|' .. due)
end
if ARGV[8] ~= '' then redis.call('HSET', k, 'exec', ARGV[8]) end
if ARGV[10] ~= '' then redis.call('HSET', k, 'meta', ARGV[10]) end
if ARGV[11] == '1' then redis.call('HSET', k, 'sse', '1') end
redis.call('HINCRBY', COUNTS, 'IN_QUEUE', 1)
-- The listing's order (newest first): a score above every earlier one, so jobs of one millisecond, or from a replica
-- whose clock is a little behind, never tie (ZREVRANGE would order ties by their random ids). Still milliseconds,
-- as the scores of entries written before this were.
local last = tonumber(redis.call('GET', IDS .. 'last') or 0)
local score = NOW > last and NOW or last + 1
redis.call('SET', IDS .. 'last', score)
redis.call('ZADD', IDS, score, id)
redis.call('RPUSH', ARGV[6] == '1' and QLOW or Q, id)
wake_for_work()
return 1
