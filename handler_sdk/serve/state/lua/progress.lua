-- ARGV: P NOW worker id lease_ms output. Returns 1, or {'conflict', status}.
local wid, id = ARGV[3], ARGV[4]
local k = jkey(id)
seen(wid, tonumber(ARGV[5]))
local bad = leased(k, wid)
if bad then return { 'conflict', bad } end
redis.call('HSET', k, 'output', ARGV[6])
changed(id, 'IN_PROGRESS')
return 1
