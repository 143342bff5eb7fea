-- failed -> pending (operator `retry`) or dead -> pending (operator `replay`): the job
-- gets a fresh set of deliveries; its history is kept.
-- ARGV: P, JP, id, expected state ('failed' | 'dead'), event name ('retried' | 'replayed')
-- Returns {result, state}: 'pending' | 'invalid' | 'gone'.
local P, JP, id, expected, event = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'idem', 'priority', 'ckey')
local st = f[1]
if not st then return {'gone', ''} end
if st ~= expected or not legal(st, 'pending') then return {'invalid', st} end
unpark(P, jk, id, st, f[2])
local score = -(tonumber(f[3]) or 0) * PRIORITY_SHIFT + redis.call('INCR', P .. 'seq')
redis.call('HSET', jk, 'state', 'pending', 'deliveries', 0, 'score', score)
redis.call('HDEL', jk, 'finished', 'cancel', 'kheld')
redis.call('ZADD', P .. 'ready', score, id)
if f[4] then redis.call('ZADD', P .. 'kj:' .. f[4], score, id) end -- live again for its key
wake(P)
emit(P, event, id, 'pending', 0)
return {'pending', st}
