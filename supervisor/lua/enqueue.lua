-- (none) -> pending, for a batch of jobs of one type.
-- ARGV: P, JP, name, count, then per job 8 values:
--   id, payload, priority, delay_ms, deadline_ms (relative, 0 none), idempotency key, ctx, parent
-- Returns per job: id, 'new' | 'existing'.
local P, JP, name, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 8
  local id, payload, prio = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2])
  local delay, dl, idem, ctx, parent = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local prev = false
  if idem ~= '' then
    prev = redis.call('GET', P .. 'idem:' .. idem)
    if prev and redis.call('EXISTS', JP .. prev) == 0 then prev = false end
  end
  if prev then
    out[#out + 1] = prev
    out[#out + 1] = 'existing'
  else
    local jk = JP .. id
    local score = -prio * PRIORITY_SHIFT + redis.call('INCR', P .. 'seq')
    local f = {'name', name, 'state', 'pending', 'payload', payload, 'priority', prio,
               'score', score, 'created', now, 'deliveries', 0, 'ctx', ctx}
    if dl > 0 then
      f[#f + 1] = 'deadline'; f[#f + 1] = now + dl
      redis.call('ZADD', P .. 'deadline', now + dl, id)
    end
    if idem ~= '' then
      f[#f + 1] = 'idem'; f[#f + 1] = idem
      redis.call('SET', P .. 'idem:' .. idem, id)
    end
    if parent ~= '' then f[#f + 1] = 'parent'; f[#f + 1] = parent end
    if delay > 0 then
      f[#f + 1] = 'run_at'; f[#f + 1] = now + delay
      redis.call('ZADD', P .. 'sched', now + delay, id)
    else
      redis.call('ZADD', P .. 'ready', score, id)
    end
    redis.call('HSET', jk, unpack(f))
    emit(P, 'enqueued', id, 'pending', 0)
    out[#out + 1] = id
    out[#out + 1] = 'new'
  end
end
wake(P)
return out
