-- ARGV: P NOW worker n lease_ms grace_ms tag held. Leases up to n queued jobs (normal before lowPriority) to the
-- worker. Returns {id, input, exec or '', meta or ''} per job. Queues hold stale ids (cancelled, timed out, purged
-- or expired while queued): they are dropped here. `tag`: the wake channel of the caller's replica; `held`: '1'
-- when the take will wait for work. Fewer than n jobs means both queues are now empty, so a held take makes its
-- worker idle (with its n - #out free slots), and work queued next wakes it (and no other) there. In the same
-- script as the pop, so no job is queued between "empty" and "idle" unseen.
local wid, n, grace, tag = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6]), ARGV[7]
seen(wid, tonumber(ARGV[5]), '0')
asked(wid)
-- Idle through another replica (a worker behind a load balancer): idle here, or not at all, from now on.
tell_idle_no_more(wid, tag)
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
if #out < n and ARGV[8] == '1' then
  idle(wid, tag, n - #out)
else
  not_idle(wid)
  -- Full, with work still queued that other woken takers may not have room for: wake the next.
  if #out == n then wake_for_work() end
end
return out
