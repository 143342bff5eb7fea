-- failed -> pending (operator `retry`) or dead -> pending (operator `replay`): the job
-- gets a fresh set of deliveries; its history is kept and records the action. Attempt numbers
-- keep counting (`deliveries` is never reset): `dbase` holds the deliveries made before the
-- revival, and max_deliver counts only those after it.
-- ARGV: P, JP, id, expected state ('failed' | 'dead'), event name ('retried' | 'replayed'),
--   source, by (who asked)
-- Returns {result, state}: 'pending' | 'invalid' | 'gone'.
local P, JP, id, expected, event, source, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'idem', 'priority', 'ckey', 'deliveries', 'ctx')
local st = f[1]
if not st then return {'gone', ''} end
if st ~= expected or not legal(st, 'pending') then return {'invalid', st} end
unpark(P, jk, id, st, f[2])
local score = -(tonumber(f[3]) or 0) * PRIORITY_SHIFT + redis.call('INCR', P .. 'seq')
redis.call('HSET', jk, 'state', 'pending', 'dbase', f[5] or '0', 'score', score)
redis.call('HDEL', jk, 'finished', 'cancel', 'kheld')
redis.call('ZADD', P .. 'ready', score, id)
if f[4] then redis.call('ZADD', P .. 'kj:' .. f[4], score, id) end -- live again for its key
wake(P)
local now = now_ms()
if event == 'retried' then record_action(jk, 'retry', now, source, by) else record_action(jk, 'replay', now, source, by) end
emit(P, event, id, 'pending', f[5] or '0', f[6])
return {'pending', st}
