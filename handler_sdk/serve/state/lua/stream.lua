-- ARGV: P NOW worker id lease_ms (output, metrics)... Appends stream items in order, each serialized as
-- {"output":...,"metrics":{...,"stream_index":i,"scenario":"stream","attempt":n}} (the caller has removed
-- those three keys from the metrics). A requeued job keeps its stream: the next attempt's items follow, numbered on. Returns the item count, or
-- {'conflict', status} when the job is not leased to this worker.
local wid, id = ARGV[3], ARGV[4]
local k = jkey(id)
seen(wid, tonumber(ARGV[5]))
local bad = leased(k, wid)
if bad then return { 'conflict', bad } end
local sk = skey(id)
local idx = redis.call('LLEN', sk)
local attempt = redis.call('HGET', k, 'attempt') or '1'
for i = 6, #ARGV, 2 do
  local out, m = ARGV[i], ARGV[i + 1]
  local tail = '"stream_index":' .. idx .. ',"scenario":"stream","attempt":' .. attempt .. '}}'
  local item
  if m == '' or m == '{}' then
    item = '{"output":' .. out .. ',"metrics":{' .. tail
  else
    item = '{"output":' .. out .. ',"metrics":' .. string.sub(m, 1, -2) .. ',' .. tail
  end
  redis.call('RPUSH', sk, item)
  idx = idx + 1
end
changed(id, 'IN_PROGRESS')
return idx
