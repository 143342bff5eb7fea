-- Batches (docs/workflows.md): an open set of jobs with callbacks that fire once, when the batch is
-- closed and its last job settled. One batch lives in one slot, B = 'js:{<batch id>}:b:': B..'rec'
-- (a hash of counts and the callbacks: its size does not grow with the batch), B..'members' and
-- B..'settled' (the job ids; deleted once the callbacks fired). A member's settle reaches the batch
-- through its type's outbox (deps.lua claim), so each op is idempotent: a settle counts once per job.
-- ARGV: op, B, then the op's own. Ops that may complete the batch return
-- {result, total, completed, failed, callbacks JSON}: result 'fire' when the callbacks are due
-- (again after a crash, until `fired`), else the batch's state.
local op, B = ARGV[1], ARGV[2]
local R, members, settled = B .. 'rec', B .. 'members', B .. 'settled'

local function due(st)
  local f = redis.call('HMGET', R, 'state', 'total', 'settled', 'completed', 'failed', 'callbacks')
  if f[1] == 'firing' or (f[1] == 'closed' and tonumber(f[3]) >= tonumber(f[2])) then
    if f[1] ~= 'firing' then redis.call('HSET', R, 'state', 'firing', 'finished', now_ms()) end
    return {'fire', f[2], f[4], f[5], f[6] or '{}'}
  end
  return {st or f[1], f[2], f[4], f[5], ''}
end

if op == 'open' then
  -- ARGV: callbacks JSON, description. A second open of the same id changes nothing.
  if redis.call('EXISTS', R) == 1 then return {'existing'} end
  redis.call('HSET', R, 'state', 'open', 'total', 0, 'settled', 0, 'completed', 0, 'failed', 0,
             'created', now_ms(), 'callbacks', ARGV[3], 'description', ARGV[4])
  return {'open'}
end

local st = redis.call('HGET', R, 'state')
if not st then return {'gone', '0', '0', '0', ''} end

if op == 'add' then
  -- ARGV: job ids (already enqueued with this batch id). Refused once the callbacks are due.
  if st == 'firing' or st == 'done' then return {'late', '0', '0', '0', ''} end
  for i = 3, #ARGV do
    if redis.call('SADD', members, ARGV[i]) == 1 then redis.call('HINCRBY', R, 'total', 1) end
  end
  return {st, redis.call('HGET', R, 'total'), '0', '0', ''}
end

if op == 'settle' then
  -- ARGV: (job id, its finished state) pairs. Each job counts once; a job the producer had not
  -- added yet (it crashed between the enqueue and the add) is added here.
  if st == 'done' then return {'done', '0', '0', '0', ''} end
  local added, ok, bad = 0, 0, 0
  for i = 3, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('SADD', settled, id) == 1 then
      added = added + redis.call('SADD', members, id)
      if ARGV[i + 1] == 'completed' then ok = ok + 1 else bad = bad + 1 end
    end
  end
  if added > 0 then redis.call('HINCRBY', R, 'total', added) end
  if ok + bad > 0 then redis.call('HINCRBY', R, 'settled', ok + bad) end
  if ok > 0 then redis.call('HINCRBY', R, 'completed', ok) end
  if bad > 0 then redis.call('HINCRBY', R, 'failed', bad) end
  return due(nil)
end

if op == 'close' then
  if st == 'open' then redis.call('HSET', R, 'state', 'closed') end
  return due(nil)
end

if op == 'fired' then
  -- ARGV: retention ms. The callbacks were enqueued (with idempotency keys): the batch is done.
  if st == 'firing' then
    redis.call('HSET', R, 'state', 'done')
    redis.call('DEL', members, settled)
    redis.call('PEXPIRE', R, tonumber(ARGV[3]))
  end
  return {'done', '0', '0', '0', ''}
end

return redis.error_reply('batch.lua: unknown op ' .. tostring(op))
