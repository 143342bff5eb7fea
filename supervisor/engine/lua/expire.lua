-- pending|retry|active -> expired once the job's deadline has passed.
-- ARGV: P, JP, id, lease ('' unless the worker running it reports the expiry)
-- Returns {result, state}: 'expired' | 'not-due' | 'invalid' | 'fenced' | 'gone'.
local P, JP, id, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'lease', 'deliveries', 'started', 'worker', 'idem', 'deadline', 'ckey', 'ctx')
local st = f[1]
if not st then return {'gone', ''} end
if not legal(st, 'expired') then return {'invalid', st} end
local now = now_ms()
local dl = tonumber(f[7])
if not dl or now < dl then return {'not-due', st} end
local err = 'deadline passed'
local fields = {'state', 'expired', 'finished', now, 'error', err}
if st == 'active' then
  if lease ~= '' and f[2] ~= lease then return {'fenced', st} end
  fields[#fields + 1] = 'history'
  fields[#fields + 1] = history_with(jk, f[3], f[4], now, 'expired', f[5], err)
  redis.call('ZREM', P .. 'active', id)
else
  unqueue(P, id)
end
redis.call('HSET', jk, unpack(fields))
finish(P, jk, id, 'expired', now, f[6], f[8])
emit(P, 'expired', id, 'expired', f[3], f[9])
return {'expired', st}
