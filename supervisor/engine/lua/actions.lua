-- Operator actions on one job, shared by the single-job scripts (revive.lua, dismiss.lua,
-- cancel.lua) and bulk.lua, so a bulk action does exactly what the single action does and
-- records it in the job's history the same way. Prepended after lib.lua to those scripts only
-- (supervisor/engine/scripts.py), so the hot scripts do not pay for it.
-- Each returns {result, state before}, as the single-job scripts reply.

-- failed -> pending (operator `retry`) or dead -> pending (operator `replay`): see revive.lua.
local function revive_job(P, JP, id, expected, event, source, by)
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
end

-- dead -> dismissed: see dismiss.lua.
local function dismiss_job(P, JP, id, source, by)
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
end

-- pending|retry -> cancelled; active: requested, or cancelled under the worker's lease: see cancel.lua.
local function cancel_job(P, JP, id, reason, lease, source, by)
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
    unqueue(P, id)
  end
  redis.call('HSET', jk, unpack(fields))
  if lease == '' then record_action(jk, 'cancel', now, source, by) end
  finish(P, jk, id, 'cancelled', now, f[6], f[8])
  emit(P, 'cancelled', id, 'cancelled', f[3], f[9], 'reason', fields[6])
  return {'cancelled', st}
end
