-- ARGV: P NOW id [report]. Returns the job's status after the call (a terminal job stays as it is), or false if
-- unknown; with `report`, {status, 1 if this call cancelled it else 0, created, started or ''}.
local id = ARGV[3]
local k = jkey(id)
local st = redis.call('HGET', k, 'status')
if not st then return false end
local changed = 0
if not TERMINAL[st] then
  if st == 'IN_PROGRESS' then stop_remote(k, id) end
  finish(id, k, st, 'CANCELLED')
  st, changed = 'CANCELLED', 1
end
if ARGV[4] == 'report' then
  local f = redis.call('HMGET', k, 'created', 'started')
  return { st, changed, f[1], f[2] or '' }
end
return st
