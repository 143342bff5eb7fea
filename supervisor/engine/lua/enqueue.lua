-- (none) -> pending, for a batch of jobs of one type, with keyed admission control.
-- ARGV: P, JP, name, count, stride (16, 13 or 3), then per job `stride` values:
--   13: id, payload, priority, delay_ms, deadline_ms (relative, 0 none), idempotency key, ctx, parent,
--       concurrency key ('' none), max_active, max_queued_per_key, when_full, stale_policy
--   16: the 13, then waits (dependencies + 1 for the gate, 0 none: the job is made `waiting`, see
--       deps.lua), on_dependency_failure, batch id ('' none: a member notifies its batch when it settles)
--   3 (plain jobs: priority 0, no delay, deadline, idempotency key, parent or concurrency key):
--       id, payload, ctx
-- Returns per job 3 values: id, outcome, detail. Outcomes: 'new' | 'existing' (idempotency key) |
-- 'rejected' (detail: 'active-limit' or 'queue-depth'; id: a live job of the key) |
-- 'coalesced' (id: the queued or running job it folded into) | 'replaced' (detail: the cancelled job).
local P, JP, name, n, stride = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])

if n == 1 and stride == 3 then
  -- One plain job, the one-at-a-time hot path: five calls and nothing else. It runs before the
  -- batch path's setup (TIME, the admit closure, the reply table), and takes `created` from the
  -- event's stream id, whose first part is the server's clock in ms (never behind the last event).
  local id = ARGV[6]
  local seq = int_s(redis.call('INCR', P .. 'seq'))
  local rid, tid = ctx_ids(ARGV[8])
  local eid = redis.call('XADD', P .. 'events', 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', 'enqueued', 'id', id,
                         'state', 'pending', 'attempt', '0', 'request_id', rid, 'trace_id', tid)
  local created = string.match(eid, '^%d+')
  redis.call('HSET', JP .. id, 'name', name, 'state', 'pending', 'payload', ARGV[7], 'score', seq,
             'created', created, 'ctx', ARGV[8])
  hist_add(P, tonumber(created), {e = 1})
  redis.call('ZADD', P .. 'ready', seq, id)
  wake(P)
  return {id, 'new', ''}
end

local now = now_ms()
local out = {}

-- Admission for a keyed job: returns outcome, id to report, detail (nil outcome = admit).
local function admit(id, ckey, kmax, qmax, when_full)
  local kj = P .. 'kj:' .. ckey
  local live = redis.call('ZRANGE', kj, 0, -1)
  if #live < kmax + qmax then return nil end
  local active = redis.call('SMEMBERS', P .. 'ka:' .. ckey)
  local is_active = {}
  for _, a in ipairs(active) do is_active[a] = true end
  local oldest_queued = nil
  for _, j in ipairs(live) do
    if not is_active[j] then oldest_queued = j; break end
  end
  local reason = 'queue-depth'
  if oldest_queued == nil then reason = 'active-limit' end
  if when_full == 'coalesce' then
    local into = oldest_queued or live[1]
    key_decision(P, ckey, 'coalesced', reason, now)
    return 'coalesced', into, reason
  end
  if when_full == 'replace-oldest' and oldest_queued then
    local jk = JP .. oldest_queued
    local why = 'replaced by ' .. id
    redis.call('ZREM', P .. 'ready', oldest_queued)
    redis.call('ZREM', P .. 'sched', oldest_queued)
    local old = redis.call('HMGET', jk, 'state', 'idem', 'ctx')
    redis.call('HSET', jk, 'state', 'cancelled', 'finished', now, 'error', why)
    finish(P, jk, oldest_queued, 'cancelled', now, old[2], ckey)
    emit(P, 'cancelled', oldest_queued, 'cancelled', 0, old[3], 'reason', why, 'from', tostring(old[1]))
    key_decision(P, ckey, 'replaced', reason, now)
    return nil, oldest_queued, 'replaced'
  end
  key_decision(P, ckey, 'rejected', reason, now)
  return 'rejected', oldest_queued or live[1], reason
end

-- Sequence numbers for the whole batch in one call (FIFO order within a priority).
local seq = redis.call('INCRBY', P .. 'seq', n) - n
if stride == 3 then
  -- Plain jobs: nothing to admit or look up, so the ready set takes the whole batch in one call.
  local ready, events, created = {}, P .. 'events', int_s(now)
  for i = 0, n - 1 do
    local b = 6 + i * 3
    local id = ARGV[b]
    seq = seq + 1
    local score = int_s(seq)
    redis.call('HSET', JP .. id, 'name', name, 'state', 'pending', 'payload', ARGV[b + 1], 'score', score,
               'created', created, 'ctx', ARGV[b + 2])
    if not batch_event(id, '0', ARGV[b + 2]) then -- one `enqueued` entry for the batch, below
      local rid, tid = ctx_ids(ARGV[b + 2])
      redis.call('XADD', events, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', 'enqueued', 'id', id, 'state', 'pending',
                 'attempt', '0', 'request_id', rid, 'trace_id', tid)
    end
    ready[#ready + 1] = score
    ready[#ready + 1] = id
    out[#out + 1] = id
    out[#out + 1] = 'new'
    out[#out + 1] = ''
  end
  call_spread('ZADD', P .. 'ready', ready)
  flush_batch_events(P, 'enqueued', 'pending')
  hist_add(P, now, {e = n})
  wake(P)
  return out
end
local added = 0 -- new jobs, for the history
for i = 0, n - 1 do
  local b = 6 + i * stride
  local id, payload, prio = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2])
  local delay, dl, idem, ctx, parent = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local ckey, kmax, qmax, when_full, stale = ARGV[b + 8], tonumber(ARGV[b + 9]), tonumber(ARGV[b + 10]), ARGV[b + 11], ARGV[b + 12]
  local waits, dep_fail, batch = 0, '', ''
  if stride == 16 then waits, dep_fail, batch = tonumber(ARGV[b + 13]), ARGV[b + 14], ARGV[b + 15] end
  local prev = false
  if idem ~= '' then
    prev = redis.call('GET', P .. 'idem:' .. idem)
    if prev and redis.call('EXISTS', JP .. prev) == 0 then prev = false end
  end
  local outcome, other, detail = nil, nil, nil
  if not prev and ckey ~= '' then outcome, other, detail = admit(id, ckey, kmax, qmax, when_full) end
  if prev then
    out[#out + 1] = prev
    out[#out + 1] = 'existing'
    out[#out + 1] = ''
  elseif outcome then
    out[#out + 1] = other
    out[#out + 1] = outcome
    out[#out + 1] = detail
  else
    local jk = JP .. id
    seq = seq + 1
    local score = -prio * PRIORITY_SHIFT + seq
    -- priority 0 and deliveries 0 are implied when absent: fewer fields, less memory per job
    redis.call('HSET', jk, 'name', name, 'state', 'pending', 'payload', payload, 'score', score, 'created', now,
               'ctx', ctx)
    local f = {}
    if prio ~= 0 then f[#f + 1] = 'priority'; f[#f + 1] = prio end
    if dl > 0 then
      f[#f + 1] = 'deadline'; f[#f + 1] = now + dl
      redis.call('ZADD', P .. 'deadline', now + dl, id)
    end
    if idem ~= '' then
      f[#f + 1] = 'idem'; f[#f + 1] = idem
      redis.call('SET', P .. 'idem:' .. idem, id)
    end
    if parent ~= '' then f[#f + 1] = 'parent'; f[#f + 1] = parent end
    if ckey ~= '' then
      for _, kv in ipairs({{'ckey', ckey}, {'kmax', kmax}, {'kstale', stale}}) do
        f[#f + 1] = kv[1]; f[#f + 1] = kv[2]
      end
      redis.call('ZADD', P .. 'kj:' .. ckey, score, id)
      if detail ~= 'replaced' then key_decision(P, ckey, 'accepted', '', now) end
    end
    if batch ~= '' then
      f[#f + 1] = 'batch'; f[#f + 1] = batch; f[#f + 1] = 'notify'; f[#f + 1] = '1'
    end
    local state = 'pending'
    if waits > 0 then -- released by deps.lua once its dependencies and its gate settled
      state = 'waiting'
      for _, kv in ipairs({{'state', 'waiting'}, {'deps_left', waits}, {'dep_fail', dep_fail}, {'delay_ms', delay}}) do
        f[#f + 1] = kv[1]; f[#f + 1] = kv[2]
      end
      redis.call('ZADD', P .. 'waiting', now, id)
    elseif delay > 0 then
      f[#f + 1] = 'run_at'; f[#f + 1] = now + delay
      redis.call('ZADD', P .. 'sched', now + delay, id)
    else
      redis.call('ZADD', P .. 'ready', score, id)
    end
    if #f > 0 then redis.call('HSET', jk, unpack(f)) end
    added = added + 1
    if state ~= 'pending' or not batch_event(id, '0', ctx) then -- pending: one entry for the batch, below
      local rid, tid = ctx_ids(ctx)
      emitted = true
      redis.call('XADD', P .. 'events', '*', 'event', 'enqueued', 'id', id, -- trimmed once, below
                 'state', state, 'attempt', '0', 'request_id', rid, 'trace_id', tid)
    end
    out[#out + 1] = id
    if detail == 'replaced' then
      out[#out + 1] = 'replaced'
      out[#out + 1] = other
    else
      out[#out + 1] = 'new'
      out[#out + 1] = ''
    end
  end
end
if added > 0 then
  hist_add(P, now, {e = added})
  flush_batch_events(P, 'enqueued', 'pending')
  trim_events(P) -- once per call, after entries of their own (the batch's entry trims itself)
end
wake(P)
return out
