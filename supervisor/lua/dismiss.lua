-- dead -> dismissed: an operator gives up on a dead job.
-- ARGV: P, JP, id
-- Returns {result, state}: 'dismissed' | 'invalid' | 'gone'.
local P, JP, id = ARGV[1], ARGV[2], ARGV[3]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'idem')
local st = f[1]
if not st then return {'gone', ''} end
if st ~= 'dead' or not legal(st, 'dismissed') then return {'invalid', st} end
local now = now_ms()
redis.call('ZREM', P .. 'st:dead', id)
redis.call('HSET', jk, 'state', 'dismissed', 'finished', now)
park(P, jk, id, 'dismissed', now, retention_ms(P, 'dismissed'), f[2])
emit(P, 'dismissed', id, 'dismissed', 0)
return {'dismissed', st}
