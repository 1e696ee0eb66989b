-- ARGV: P NOW worker id lease_ms status output error details. A result counts only from the lease holder:
-- returns {created, started}, or {'conflict', status} (cancelled, timed out, re-leased or unknown), and nothing changes.
local wid, id, status = ARGV[3], ARGV[4], ARGV[6]
local k = jkey(id)
seen(wid, tonumber(ARGV[5]))
local bad = leased(k, wid)
if bad then return { 'conflict', bad } end
if not TERMINAL[status] then return redis.error_reply('not a final status: ' .. status) end
local times = redis.call('HMGET', k, 'created', 'started')
finish(id, k, 'IN_PROGRESS', status, ARGV[7], ARGV[8], ARGV[9])
return { times[1], times[2] or '' }
