-- Extends the leases of a batch of active jobs (no state change).
-- ARGV: P, JP, ack_wait_ms, count, then per job: id, lease, progress JSON or ''
-- Returns per job: 'ok' | 'cancel' (cancellation requested) | 'lost' (lease taken over or job moved on).
local P, JP, ack, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 3
  local id, lease, progress = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'lease', 'cancel', 'deliveries', 'ctx')
  if f[1] ~= 'active' or f[2] ~= lease then
    out[#out + 1] = 'lost'
  else
    redis.call('ZADD', P .. 'active', now + ack, id)
    if progress ~= '' then
      redis.call('HSET', jk, 'progress', progress)
      emit(P, 'progress', id, 'active', f[4], f[5], 'progress', progress)
    end
    if f[3] then out[#out + 1] = 'cancel' else out[#out + 1] = 'ok' end
  end
end
return out
