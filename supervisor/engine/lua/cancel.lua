-- pending|retry -> cancelled at once; active: cancellation requested (the instance holding
-- the job is told at once on its cancel channel, and again on its next heartbeat), or, with
-- a lease token, active -> cancelled when the worker reports that the handler stopped.
-- ARGV: P, JP, id, reason, lease ('' for a producer/operator request), source, by (who asked:
--   recorded in the job's history for a producer/operator request)
-- Returns {result, state}: result is 'cancelled' | 'requested' | 'invalid' | 'fenced' | 'gone'.
local P, JP, id, reason, lease, source, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'lease', 'deliveries', 'started', 'worker', 'idem', 'cancel', 'ckey', 'ctx')
local st = f[1]
if not st then return {'gone', ''} end
local now = now_ms()
if st == 'active' and lease == '' then
  if not f[7] then
    redis.call('HSET', jk, 'cancel', reason)
    record_action(jk, 'cancel', now, source, by)
    emit(P, 'cancel-requested', id, 'active', f[3], f[9], 'reason', reason)
  end
  -- wake the instance holding the job now, not at its next lease renewal (a channel, not a key)
  if f[5] then redis.call('PUBLISH', CANCEL_CHANNEL .. f[5], id) end
  return {'requested', st}
end
if not legal(st, 'cancelled') then return {'invalid', st} end
local fields = {'state', 'cancelled', 'finished', now, 'error', reason}
if st == 'active' then
  if f[2] ~= lease then return {'fenced', st} end
  fields[#fields + 1] = 'history'
  fields[#fields + 1] = history_with(jk, f[3], f[4], now, 'cancelled', f[5], f[7] or reason)
  fields[6] = f[7] or reason
  redis.call('ZREM', P .. 'active', id)
else
  redis.call('ZREM', P .. 'ready', id)
  redis.call('ZREM', P .. 'sched', id)
end
redis.call('HSET', jk, unpack(fields))
if lease == '' then record_action(jk, 'cancel', now, source, by) end
finish(P, jk, id, 'cancelled', now, f[6], f[8])
emit(P, 'cancelled', id, 'cancelled', f[3], f[9], 'reason', fields[6])
return {'cancelled', st}
