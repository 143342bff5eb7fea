-- pending|retry -> cancelled at once; active: cancellation requested (the worker is
-- told on its next heartbeat), or, with a lease token, active -> cancelled when the
-- worker reports that the handler stopped.
-- ARGV: P, JP, id, reason, lease ('' for a producer/operator request)
-- Returns {result, state}: result is 'cancelled' | 'requested' | 'invalid' | 'fenced' | 'gone'.
local P, JP, id, reason, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'lease', 'deliveries', 'started', 'worker', 'idem', 'cancel', 'ckey')
local st = f[1]
if not st then return {'gone', ''} end
local now = now_ms()
if st == 'active' and lease == '' then
  if not f[7] then
    redis.call('HSET', jk, 'cancel', reason)
    emit(P, 'cancel-requested', id, 'active', f[3], 'reason', reason)
  end
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
park(P, jk, id, 'cancelled', now, retention_ms(P, 'cancelled'), f[6])
key_leave(P, id, f[8], true)
emit(P, 'cancelled', id, 'cancelled', f[3], 'reason', fields[6])
return {'cancelled', st}
