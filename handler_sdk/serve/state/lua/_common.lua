-- The library's shared part, defined once at FUNCTION LOAD. Each function starts with bind(ARGV): ARGV[1] is the
-- key prefix "hsdk:{endpoint}:" (the braces are a hash tag: every key of one endpoint lives in one cluster slot),
-- ARGV[2] the caller's clock in ms. A transition never reads the server's clock, so a test can drive ttl, leases
-- and retention with a fake one. Rebinding these upvalues per call is safe: redis-server runs one call at a time.
local P, NOW, Q, QLOW, DL, COUNTS, IDS, WORKERS, CH, HOOKS, IDLE, IDLECH, IDLEROOM, AWAKE, AWROOM

local function bind(argv)
  P = argv[1]
  NOW = tonumber(argv[2])
  Q, QLOW, DL, COUNTS, IDS, WORKERS, CH, HOOKS = P .. 'q', P .. 'qlow', P .. 'dl', P .. 'counts', P .. 'ids',
    P .. 'workers', P .. 'changed', P .. 'hooks'
  IDLE, IDLECH, IDLEROOM, AWAKE, AWROOM = P .. 'idle', P .. 'idlech', P .. 'idleroom', P .. 'awake', P .. 'awroom'
end
local TERMINAL = { COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true }
-- handler_sdk/lifecycle.py's table; a script refuses anything else rather than corrupt a record.
local ALLOWED = {
  IN_QUEUE = { IN_PROGRESS = true, CANCELLED = true, TIMED_OUT = true },
  IN_PROGRESS = { COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true, IN_QUEUE = true },
  FAILED = { IN_QUEUE = true },
  TIMED_OUT = { IN_QUEUE = true },
  COMPLETED = {},
  CANCELLED = {},
}

local function jkey(id) return P .. 'job:' .. id end
local function skey(id) return P .. 'stream:' .. id end
local function ikey(key) return P .. 'idem:' .. key end
local function wjobs(wid) return P .. 'wjobs:' .. wid end
local function stopkey(wid) return P .. 'stops:' .. wid end

local function set_status(k, old, new)
  -- Raised before this transition's first write: a script that errors keeps what it already wrote.
  if not ALLOWED[old][new] then error('illegal transition ' .. old .. ' -> ' .. new) end
  redis.call('HSET', k, 'status', new)
  redis.call('HINCRBY', COUNTS, old, -1)
  redis.call('HINCRBY', COUNTS, new, 1)
end

-- The worker is alive until NOW + lease_ms; one member per worker in the deadline set, so a refresh moves it.
local function seen(wid, lease_ms, init)
  redis.call('ZADD', DL, NOW + lease_ms, 'lease|' .. wid)
  if init ~= nil then
    redis.call('HSET', WORKERS, wid, init)
  else
    redis.call('HSETNX', WORKERS, wid, '0')
  end
end

-- "This job changed": one message per transition, '<id> <status>' (GONE once deleted), so a waiter that only
-- cares about the end need not read the record to know it is not there yet.
local function changed(id, status) redis.call('PUBLISH', CH, id .. ' ' .. status) end

-- The idle takers: a worker whose held take left the queue empty is in IDLE, with the wake channel of the replica
-- holding its take in IDLECH and its free slots in IDLEROOM. Scored by a counter, not a replica's clock (clocks
-- differ): the one idle longest is woken first, whichever replica it is on.
local function idle(wid, ch, room)
  redis.call('ZADD', IDLE, redis.call('INCR', IDLE .. 'seq'), wid)
  redis.call('HSET', IDLECH, wid, ch)
  redis.call('HSET', IDLEROOM, wid, room)
end

local function not_idle(wid)
  redis.call('ZREM', IDLE, wid)
  redis.call('HDEL', IDLECH, wid)
  redis.call('HDEL', IDLEROOM, wid)
end

-- The worker is idle no more on the replica it was idle on (unless that is `tag`, the caller's own): that replica
-- drops the watch it keeps for the worker's next take there, which must ask Redis now.
local function tell_idle_no_more(wid, tag)
  local ch = redis.call('HGET', IDLECH, wid)
  if ch and ch ~= tag then redis.call('PUBLISH', P .. 'wake:' .. ch, 'd ' .. wid) end
end

-- The woken takers that have not asked yet: AWAKE (by when, on the waker's clock), AWAKE .. 'room' each one's free
-- slots and AWROOM their sum, the jobs they will take between them. A woken taker asks within milliseconds; one
-- silent for AWAKE_MS is gone or frozen, and no longer counted on.
local AWAKE_MS = 1000

local function asked(wid)
  local room = redis.call('HGET', AWAKE .. 'room', wid)
  if room then
    redis.call('HDEL', AWAKE .. 'room', wid)
    redis.call('ZREM', AWAKE, wid)
    redis.call('DECRBY', AWROOM, room)
  end
end

local function queued() return redis.call('LLEN', Q) + redis.call('LLEN', QLOW) end

-- Wake one idle taker, on its replica's own channel. PUBLISH counts the subscribers it reached: none means that
-- replica is gone (its connection closed), so the next idle taker is tried. The woken taker leaves IDLE; its next
-- take either leases jobs or, finding the queue empty, makes it idle again. A replica that gets a wake it cannot
-- use (no take waiting there, or none with a free slot) passes it on (wake.lua). Each gone replica's entry is
-- popped once, so the loop's cost over time is one step per wake plus one per entry.
local function wake_one()
  while true do
    local top = redis.call('ZPOPMIN', IDLE)
    if #top == 0 then return 0 end
    local wid = top[1]
    local ch = redis.call('HGET', IDLECH, wid)
    local room = tonumber(redis.call('HGET', IDLEROOM, wid) or '1')
    redis.call('HDEL', IDLECH, wid)
    redis.call('HDEL', IDLEROOM, wid)
    if ch and redis.call('PUBLISH', P .. 'wake:' .. ch, 'w ' .. wid) > 0 then
      redis.call('ZADD', AWAKE, NOW, wid)
      redis.call('HSET', AWAKE .. 'room', wid, room)
      redis.call('INCRBY', AWROOM, room)
      return 1
    end
  end
end

-- Work was queued (or is still queued): wake idle takers until those woken and not yet asking have room for all
-- of it, so a burst wakes one taker with room for the burst, not one per job. Nobody idle: every taker is busy or
-- already woken, and each asks Redis again before it waits.
local function wake_for_work()
  for _, wid in ipairs(redis.call('ZRANGEBYSCORE', AWAKE, '-inf', NOW - AWAKE_MS)) do asked(wid) end
  local n = 0
  while queued() > tonumber(redis.call('GET', AWROOM) or '0') and wake_one() == 1 do n = n + 1 end
  return n
end

local function stop_remote(k, id)
  local wid = redis.call('HGET', k, 'worker')
  if wid then
    redis.call('SADD', stopkey(wid), id)
    redis.call('PUBLISH', CH, 'w:' .. wid)
  end
end

-- Ends a job: status, times, result, retention deadline, and the one message every waiter on it wakes for.
local function finish(id, k, old, new, output, err, details)
  set_status(k, old, new)
  -- Never before its start (another replica's clock may have stamped it): executionTime is never negative.
  local started = tonumber(redis.call('HGET', k, 'started'))
  redis.call('HSET', k, 'ended', started and math.max(NOW, started) or NOW)
  redis.call('HDEL', k, 'output', 'error', 'details')
  if output and output ~= '' then redis.call('HSET', k, 'output', output) end
  if err and err ~= '' then redis.call('HSET', k, 'error', err) end
  if details and details ~= '' then redis.call('HSET', k, 'details', details) end
  local f = redis.call('HMGET', k, 'sync', 'worker', 'retention')
  if f[1] == '1' and (new == 'COMPLETED' or new == 'CANCELLED') then
    redis.call('HDEL', k, 'input') -- only /retry (of FAILED or TIMED_OUT) reads it again
  end
  if f[2] then redis.call('SREM', wjobs(f[2]), id) end
  redis.call('ZADD', DL, NOW + tonumber(f[3]), 'exp|' .. id)
  -- Its completed webhook waits in the outbox until a replica has delivered it (or given up): see hooks.lua.
  if redis.call('HGET', k, 'hook') == '1' then redis.call('ZADD', HOOKS, NOW, id) end
  changed(id, new)
end

-- A job removed (purged, past its retention) with its stream, its /requests entry and its Idempotency-Key.
local function drop(id, k, status)
  local key = redis.call('HGET', k, 'idem')
  if key and redis.call('HGET', ikey(key), 'id') == id then redis.call('DEL', ikey(key)) end
  redis.call('DEL', k, skey(id))
  redis.call('ZREM', IDS, id)
  redis.call('HINCRBY', COUNTS, status, -1)
  changed(id, 'GONE')
end

-- errorDetails as models.make_error_details builds it (its three fields), for the transitions run in here.
local function fail_with(id, k, old, new, etype, message)
  local details = cjson.encode({ error_type = etype, error_message = message, error_traceback = cjson.null })
  return finish(id, k, old, new, nil, etype .. ': ' .. message, details)
end

-- An in-progress job back to the queue without its lease (lost worker, hand-back).
local function queue_again(id, k, front)
  set_status(k, 'IN_PROGRESS', 'IN_QUEUE')
  local wid = redis.call('HGET', k, 'worker')
  if wid then redis.call('SREM', wjobs(wid), id) end
  redis.call('HDEL', k, 'worker', 'started', 'output')
  if front then redis.call('LPUSH', Q, id) else redis.call('RPUSH', Q, id) end
  changed(id, 'IN_QUEUE')
  wake_for_work()
end

-- A worker that is gone (silent past its lease, or said so): each of its jobs is a lost lease, requeued once,
-- or FAILED once it has been tried max_attempts times.
local function lapse(wid, max_attempts)
  redis.call('HDEL', WORKERS, wid)
  tell_idle_no_more(wid, nil)
  not_idle(wid)
  asked(wid)
  redis.call('ZREM', DL, 'lease|' .. wid)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', wjobs(wid))) do
    local k = jkey(id)
    local f = redis.call('HMGET', k, 'status', 'worker')
    if f[1] == 'IN_PROGRESS' and f[2] == wid then
      n = n + 1
      local tries = redis.call('HINCRBY', k, 'retries', 1)
      redis.call('HINCRBY', COUNTS, 'retried', 1)
      if tries >= max_attempts then
        fail_with(id, k, 'IN_PROGRESS', 'FAILED', 'WorkerLost',
          'job was lost with its worker ' .. tries .. ' times (max_attempts=' .. max_attempts .. '): '
          .. 'the worker died, was killed, or lost its lease while running it')
      elseif redis.call('HGET', k, 'sse') == '1' and redis.call('EXISTS', skey(id)) == 1 then
        -- Its client already holds part of an SSE answer: a re-run would send a second answer after it.
        fail_with(id, k, 'IN_PROGRESS', 'FAILED', 'WorkerLost',
          'the worker was lost while streaming this answer; the partial answer cannot be resumed')
      else
        queue_again(id, k, true)
      end
    end
  end
  redis.call('DEL', wjobs(wid), stopkey(wid))
  return n
end

local function time_out(id, k, old, message)
  if old == 'IN_PROGRESS' then stop_remote(k, id) end
  return fail_with(id, k, old, 'TIMED_OUT', 'TimeoutError', message)
end

-- The check every worker call makes: the job is in progress under this worker's lease.
local function leased(k, wid)
  local f = redis.call('HMGET', k, 'status', 'worker')
  if not f[1] then return 'missing' end
  if f[1] ~= 'IN_PROGRESS' or f[2] ~= wid then return f[1] end
  return nil
end
