-- ARGV: P NOW id. Returns the job's status after the call (a terminal job stays as it is), or false if unknown.
local id = ARGV[3]
local k = jkey(id)
local st = redis.call('HGET', k, 'status')
if not st then return false end
if TERMINAL[st] then return st end
if st == 'IN_PROGRESS' then stop_remote(k, id) end
finish(id, k, st, 'CANCELLED')
return 'CANCELLED'
