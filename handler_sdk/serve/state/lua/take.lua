-- ARGV: P NOW worker n lease_ms grace_ms held. Leases up to n queued jobs (normal before lowPriority) to the
-- worker. Returns {id, input, exec or '', meta or ''} per job. Queues hold stale ids (cancelled, timed out, purged
-- or expired while queued): they are dropped here. `held`: the wake channel of the caller's replica when the take
-- will wait for work ('' for a take that returns at once); fewer than n jobs means both queues are now empty, so a
-- held take makes its worker idle (with its n - #out free slots), and work queued next wakes it (and no other)
-- there. In the same script as the pop, so no job is queued between "empty" and "idle" unseen.
local wid, n, grace = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
seen(wid, tonumber(ARGV[5]), '0')
asked(wid)
local out = {}
for _, q in ipairs({ Q, QLOW }) do
  while #out < n do
    local id = redis.call('LPOP', q)
    if not id then break end
    local k = jkey(id)
    local f = redis.call('HMGET', k, 'status', 'input', 'exec', 'meta', 'created')
    if f[1] == 'IN_QUEUE' then
      set_status(k, 'IN_QUEUE', 'IN_PROGRESS')
      -- Never before its creation: replicas' clocks differ, and a take sent just before the submit it serves
      -- can carry the earlier time. delayTime is never negative.
      local started = math.max(NOW, tonumber(f[5]) or NOW)
      redis.call('HSET', k, 'started', started, 'worker', wid)
      redis.call('HINCRBY', k, 'attempt', 1) -- stream items carry it as metrics.attempt
      redis.call('SADD', wjobs(wid), id)
      if f[3] then
        local due = NOW + tonumber(f[3]) + grace
        redis.call('ZADD', DL, due, 'exec|' .. id .. '|' .. started)
      end
      out[#out + 1] = { id, f[2] or '', f[3] or '', f[4] or '' }
      changed(id, 'IN_PROGRESS')
    end
  end
end
if #out < n and ARGV[7] ~= '' then
  idle(wid, ARGV[7], n - #out)
else
  not_idle(wid)
  -- Full, with work still queued that other woken takers may not have room for: wake the next.
  if #out == n then wake_for_work() end
end
return out
