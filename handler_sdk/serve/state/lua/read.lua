-- Reads. ARGV: P NOW op ...
--   status id ttl?   : the record as a flat field list (+ 'nstream'), false if unknown; a ttl below its
--                      retention shortens it (SEED.md's ?ttl= on /status).
--   stream id start? : {status, items...}; without start, the items past the cursor, and the cursor moves on.
--   health           : {counts..., 'workers', idle, running, initializing}.
--   requests limit offset status? : {total, {id, status, created, started, ended, error}, ...} newest first.
--   workers          : {{id, initializing, {job ids...}, lease due or false}, ...}: one snapshot, one round trip.
local op = ARGV[3]
if op == 'status' then
  local k = jkey(ARGV[4])
  local rec = redis.call('HGETALL', k)
  if #rec == 0 then return false end
  if ARGV[5] and ARGV[5] ~= '' then
    local f = redis.call('HMGET', k, 'retention', 'ended')
    if tonumber(ARGV[5]) < tonumber(f[1]) then
      redis.call('HSET', k, 'retention', ARGV[5])
      if f[2] then redis.call('ZADD', DL, tonumber(f[2]) + tonumber(ARGV[5]), 'exp|' .. ARGV[4]) end
      rec = redis.call('HGETALL', k)
    end
  end
  rec[#rec + 1] = 'nstream'
  rec[#rec + 1] = redis.call('LLEN', skey(ARGV[4]))
  return rec
elseif op == 'stream' then
  local k = jkey(ARGV[4])
  local f = redis.call('HMGET', k, 'status', 'cursor')
  if not f[1] then return false end
  local start = tonumber(ARGV[5] ~= nil and ARGV[5] ~= '' and ARGV[5] or f[2])
  local items = redis.call('LRANGE', skey(ARGV[4]), math.max(start, 0), -1)
  if (ARGV[5] == nil or ARGV[5] == '') and #items > 0 then redis.call('HSET', k, 'cursor', start + #items) end
  table.insert(items, 1, f[1])
  return items
elseif op == 'health' then
  local out = redis.call('HGETALL', COUNTS)
  local idle, running, init = 0, 0, 0
  local w = redis.call('HGETALL', WORKERS)
  for i = 1, #w, 2 do
    if w[i + 1] == '1' then
      init = init + 1
    elseif redis.call('SCARD', wjobs(w[i])) > 0 then
      running = running + 1
    else
      idle = idle + 1
    end
  end
  out[#out + 1] = 'workers'
  out[#out + 1] = { idle, running, init }
  return out
elseif op == 'requests' then
  local limit, offset, want = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  local ids = redis.call('ZREVRANGE', IDS, 0, -1)
  local out, total = { 0 }, 0
  for _, id in ipairs(ids) do
    local f = redis.call('HMGET', jkey(id), 'status', 'created', 'started', 'ended', 'error')
    if f[1] and (want == nil or want == '' or f[1] == want) then
      if total >= offset and total < offset + limit then
        out[#out + 1] = { id, f[1], f[2], f[3] or '', f[4] or '', f[5] or '' }
      end
      total = total + 1
    end
  end
  out[1] = total
  return out
elseif op == 'workers' then
  local out = {}
  local w = redis.call('HGETALL', WORKERS)
  for i = 1, #w, 2 do
    out[#out + 1] = { w[i], w[i + 1], redis.call('SMEMBERS', wjobs(w[i])), redis.call('ZSCORE', DL, 'lease|' .. w[i]) }
  end
  return out
end
return redis.error_reply('unknown op ' .. op)
