-- active -> pending for jobs handed back on shutdown: the lease ends now, so another
-- instance takes them at once, and the delivery does not count against max_deliver.
-- ARGV: P, JP, count, then per job: id, lease
-- Returns per job: 'pending' | 'fenced:<state>'.
local P, JP, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local id, lease = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'lease', 'deliveries', 'started', 'worker', 'score', 'ckey', 'ctx')
  if f[1] ~= 'active' or f[2] ~= lease then
    out[#out + 1] = 'fenced:' .. tostring(f[1] or 'gone')
  else
    local hist = history_with(jk, f[3], f[4], now, 'released', f[5], 'released on shutdown')
    redis.call('HSET', jk, 'state', 'pending', 'deliveries', tonumber(f[3]) - 1, 'history', hist)
    redis.call('ZREM', P .. 'active', id)
    redis.call('ZADD', P .. 'ready', f[6], id)
    key_leave(P, id, f[7], false)
    emit(P, 'released', id, 'pending', f[3], f[8])
    out[#out + 1] = 'pending'
  end
end
wake(P)
return out
