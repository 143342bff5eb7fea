-- dead -> dismissed: an operator gives up on a dead job.
-- ARGV: P, JP, id, source, by (who asked: recorded in the job's history)
-- Returns {result, state}: 'dismissed' | 'invalid' | 'gone'.
local P, JP, id, source, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = JP .. id
local f = redis.call('HMGET', jk, 'state', 'idem', 'deliveries', 'ctx')
local st = f[1]
if not st then return {'gone', ''} end
if st ~= 'dead' or not legal(st, 'dismissed') then return {'invalid', st} end
local now = now_ms()
redis.call('ZREM', P .. 'st:dead', id)
redis.call('HSET', jk, 'state', 'dismissed', 'finished', now)
record_action(jk, 'dismiss', now, source, by)
park(P, jk, id, 'dismissed', now, retention_ms(P, 'dismissed'), f[2])
emit(P, 'dismissed', id, 'dismissed', f[3], f[4])
return {'dismissed', st}
