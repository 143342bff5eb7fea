-- Shared by every transition script; supervisor/engine/scripts.py prepends it and
-- generates legal_table() (the SPEC §3 table) from supervisor/engine/states.py.
-- Key names are built from ARGV prefixes that all carry one type's hash tag,
-- so every key a script touches is in one Redis Cluster slot.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as Redis will store it. redis.call formats every Lua number it is given with
-- printf("%.17g"), a slow path of libc; the hot scripts format a value used per job once,
-- with this integer format, and pass text (constants are written as text for the same reason).
local function int_s(x)
  return string.format('%d', x)
end

-- Run `cmd key` with the items of `list` as further arguments, in slices small enough for
-- unpack (Lua's stack) and even-sized, so score/member pairs stay together.
local function call_spread(cmd, key, list)
  for i = 1, #list, 4000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 3999, #list)))
  end
end

-- The reply of a redis.pcall, or nil when it is an error (a key of the wrong type, written by
-- another program): scripts skip such a record instead of failing every job of their call.
local function rec(reply)
  if type(reply) == 'table' and reply.err then return nil end
  return reply
end

local LEGAL = nil
local function legal(from, to)
  if LEGAL == nil then LEGAL = legal_table() end
  local allowed = LEGAL[from]
  return allowed ~= nil and allowed[to] == true
end

-- Append one lifecycle event to the type's stream (bounded, approximate trim). `ctx` is the
-- job's context JSON (or false): its request and trace ids go on the event, so an event can be
-- followed back to the request that caused it without reading the job.
local function ctx_ids(ctx)
  if not ctx then return '', '', false end
  -- Our clients write the request id and the trace id first: one anchored match reads both and
  -- finds them plain (letters, digits, '-': see batch_event), cheaper than cutting them out at fixed
  -- places and checking each (~2 µs of a job's life); anything else is searched.
  local rid, tid = string.match(ctx, '^{"request_id":"([%w%-]+)","trace_id":"([%w%-]+)"')
  if rid then return rid, tid, true end
  return string.match(ctx, '"request_id":%s*"([^"]*)"') or '', string.match(ctx, '"trace_id":%s*"([^"]*)"') or '', false
end

-- A script that emits an event per job of a batch (claim, complete) sets `trim_once`: its XADDs
-- then leave out MAXLEN and it trims the stream once, at its end (`trim_events`): the same
-- approximate cap, without three more arguments converted, checked and propagated per event.
local trim_once, emitted = false, false
local function trim_events(P)
  if emitted then redis.call('XTRIM', P .. 'events', 'MAXLEN', '~', EVENTS_MAXLEN) end
end

local function emit(P, event, id, state, attempt, ctx, ...)
  local rid, tid = ctx_ids(ctx)
  if trim_once then
    emitted = true
    redis.call('XADD', P .. 'events', '*',
      'event', event, 'id', id, 'state', state, 'attempt', attempt or '0', 'request_id', rid, 'trace_id', tid, ...)
    return
  end
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', EVENTS_MAXLEN, '*',
    'event', event, 'id', id, 'state', state, 'attempt', attempt or '0', 'request_id', rid, 'trace_id', tid, ...)
end

-- The events of a batch (claim's `started`, complete's `completed`, the bulk enqueue's `enqueued`)
-- go in one stream entry per call instead of one per job: the shared fields (event, state, ...),
-- then `ids`, `attempts`, `request_ids` and `trace_ids`, each a space-separated list in the same
-- order, and for `completed` `results` (a JSON array) and, when one was too large to carry,
-- `result_bytes` (a list, 0 for the carried ones). Readers (supervisor/operators/admin.py,
-- job_fields) give one event per job. An XADD per job was a third of Redis's work for a job's
-- whole life. A job whose id or context ids are not plain (not written by our clients) gets an
-- entry of its own, as before.
local batch = {ids = {}, attempts = {}, rids = {}, tids = {}, results = {}, sizes = {}, large = false}
local function plain(s)
  return s ~= '' and not string.find(s, '[^%w%-]')
end
-- Adds a job's event to the batch; false when it is not plain (the caller emits it on its own).
local function batch_event(id, attempt, ctx, result)
  local rid, tid, clean = ctx_ids(ctx)
  if not (plain(id) and (clean or plain(rid) and plain(tid))) then return false end
  local k = #batch.ids + 1
  batch.ids[k], batch.attempts[k], batch.rids[k], batch.tids[k] = id, attempt or '0', rid, tid
  if result then
    if #result <= EVENT_RESULT_MAX then
      batch.results[k], batch.sizes[k] = result, '0'
    else -- bounded: a large result is read from the job, not carried by every event
      batch.results[k], batch.sizes[k], batch.large = 'null', int_s(#result), true
    end
  end
  return true
end
-- One entry for the events added since the last flush, trimming the stream so that it holds
-- about EVENTS_MAXLEN events (a batch entry counts as its jobs).
local function flush_batch_events(P, event, state, ...)
  local n = #batch.ids
  if n == 0 then return end
  local f = {'event', event, 'state', state, 'ids', table.concat(batch.ids, ' '),
             'attempts', table.concat(batch.attempts, ' '), 'request_ids', table.concat(batch.rids, ' '),
             'trace_ids', table.concat(batch.tids, ' ')}
  if #batch.results > 0 then
    f[#f + 1] = 'results'; f[#f + 1] = '[' .. table.concat(batch.results, ',') .. ']'
    if batch.large then f[#f + 1] = 'result_bytes'; f[#f + 1] = table.concat(batch.sizes, ' ') end
  end
  for _, v in ipairs({...}) do f[#f + 1] = v end
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', int_s(math.max(100, math.floor(EVENTS_MAXLEN / n))), '*', unpack(f))
  batch = {ids = {}, attempts = {}, rids = {}, tids = {}, results = {}, sizes = {}, large = false}
end

-- The history field (a JSON array kept as text) with `entry` (JSON object text) appended.
-- `h` is the field's current value when the caller read it already (false: absent), nil to read it here.
local function history_append(jk, entry, h)
  if h == nil then h = redis.call('HGET', jk, 'history') end
  if h then return string.sub(h, 1, -2) .. ',' .. entry .. ']' end
  return '[' .. entry .. ']'
end

-- The history field with one more attempt entry. `attempt` and `started` are the record's own
-- integer fields (text or number; false: absent). `tb`: the attempt's stack trace, when it failed with one.
local function history_with(jk, attempt, started, now, outcome, instance, err, h, tb)
  local entry = '{"attempt":' .. (attempt or '0') .. ',"started":' .. (started or 'null')
    .. ',"ended":' .. now .. ',"outcome":"' .. outcome .. '"'
  if instance then entry = entry .. ',"instance":' .. cjson.encode(instance) end
  if err then entry = entry .. ',"error":' .. cjson.encode(err) end
  if tb then entry = entry .. ',"traceback":' .. cjson.encode(tb) end
  return history_append(jk, entry .. '}', h)
end

-- Record an operator's action (cancel, retry, replay, dismiss) in the job's history, with who
-- asked: `source` is cli | api | client, `by` the API token's name ('' when there is none).
local function record_action(jk, action, now, source, by)
  local entry = '{"action":"' .. action .. '","at":' .. now .. ',"source":' .. cjson.encode(source or '')
  if by and by ~= '' then entry = entry .. ',"by":' .. cjson.encode(by) end
  redis.call('HSET', jk, 'history', history_append(jk, entry .. '}'))
end

-- How long a finished record is kept, from the type's published policy.
local function retention_ms(P, state)
  local field = 'retention_ms'
  if state == 'failed' or state == 'dead' then field = 'dead_retention_ms' end
  return tonumber(redis.call('HGET', P .. 'meta', field)) or DEFAULT_RETENTION[field]
end

-- A job reached a finished state: index it by finish time, let retention trim it.
local function park(P, jk, id, state, now, ret, idem)
  local idx = P .. 'st:' .. state
  redis.call('ZADD', idx, now, id)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now - ret)
  redis.call('PEXPIRE', jk, ret)
  redis.call('ZREM', P .. 'deadline', id)
  if idem then redis.call('PEXPIRE', P .. 'idem:' .. idem, ret) end
end

-- A parked job comes back to life (retry, replay): it is kept until it finishes again.
local function unpark(P, jk, id, state, idem)
  redis.call('ZREM', P .. 'st:' .. state, id)
  redis.call('PERSIST', jk)
  if idem then redis.call('PERSIST', P .. 'idem:' .. idem) end
end

-- Touch the queue's wake-up key. One call: while the marker is still there (nobody consumed it
-- since the last touch, so the next or a now blocked BZPOPMIN gets it anyway), the ZADD changes
-- nothing, so Redis neither propagates it nor wakes anyone (an EXISTS first was a command more).
local function wake(P)
  redis.call('ZADD', P .. 'marker', '0', 'm')
end

local PRIORITY_SHIFT = 1099511627776 -- 2^40: score = -priority * 2^40 + seq

-- Keyed concurrency. Per key K of a type: kj:K (live jobs: pending, retry, active; by score),
-- ka:K (active jobs), kw:K (jobs popped while K was at max_active, waiting for a slot),
-- kstat:K (last decision, stale takeovers).

-- A job stops being active (finished: it also stops being live). Frees its slot and lets
-- the oldest waiting job of the key back into the ready set.
local function key_leave(P, id, ckey, finished)
  if not ckey or ckey == '' then return end
  if finished then
    redis.call('ZREM', P .. 'kj:' .. ckey, id)
    redis.call('ZREM', P .. 'kw:' .. ckey, id)
  end
  if redis.call('SREM', P .. 'ka:' .. ckey, id) == 1 then
    local w = redis.call('ZPOPMIN', P .. 'kw:' .. ckey, 1)
    if w[1] then
      redis.call('ZADD', P .. 'ready', w[2], w[1])
      wake(P)
    end
  end
end

-- A job that others wait on (dependents, a batch: its record has `notify`) settled: a notice in
-- its type's outbox, written with the transition; a daemon delivers it to the other slots
-- (deps.lua, batch.lua; supervisor/daemon/releaser.py). The PUBLISH wakes deliverers at once
-- (a channel, not a key); the janitor's sweep covers a lost message.
local function notify_settled(P, id, state)
  redis.call('ZADD', P .. 'outbox', 0, id .. ' ' .. state)
  redis.call('PUBLISH', OUTBOX_CHANNEL, P)
end

-- Take a job that is not running out of the sets that hold it until it runs: ready, delayed
-- (sched), and waiting on its dependencies.
local function unqueue(P, id)
  redis.call('ZREM', P .. 'ready', id)
  redis.call('ZREM', P .. 'sched', id)
  redis.call('ZREM', P .. 'waiting', id)
end

-- A live job reached a finished state: parked for its retention, and out of its key's sets.
local function finish(P, jk, id, state, now, idem, ckey)
  park(P, jk, id, state, now, retention_ms(P, state), idem)
  key_leave(P, id, ckey, true)
  if redis.call('HEXISTS', jk, 'notify') == 1 then notify_settled(P, id, state) end
end

local function key_decision(P, ckey, decision, reason, now)
  redis.call('HSET', P .. 'kstat:' .. ckey, 'decision', decision, 'reason', reason, 'at', now)
end

-- Per-minute history of a type, for plots (supervisor.operators.history reads it): one hash per
-- type and minute, P .. 'hist:' .. (ms // 60000), expiring 25 h after its first field (so 24 h
-- are always there). Fields: e enqueued, c completed, f failed, d dead, r retried (an attempt
-- failed, or its lease lapsed, and the job will run again); R<b> and W<b> count run times and
-- queue waits in log-scale buckets, 4 per doubling: bucket b > 0 holds ms in [2^((b-1)/4), 2^(b/4)),
-- bucket 0 under 1 ms. `counts` maps fields to increments: one HINCRBY per distinct field,
-- written by the script that already touches the job (no extra round trip).
local function hist_add(P, now, counts)
  local key = P .. 'hist:' .. int_s(math.floor(now / 60000))
  local fresh = false
  for f, n in pairs(counts) do
    local s = int_s(n)
    if redis.call('HINCRBY', key, f, s) == n then fresh = true end -- a new field: maybe a new hash
  end
  if fresh then redis.call('EXPIRE', key, '90000') end
end

local HIST_PER_LN = 4 / math.log(2)
-- Count one duration (ms) into `counts` under its bucket field; `kind` is 'R' (run) or 'W' (wait).
local function hist_time(counts, kind, ms)
  local f = kind .. '0'
  if ms >= 1 then f = kind .. int_s(math.floor(math.log(ms) * HIST_PER_LN) + 1) end
  counts[f] = (counts[f] or 0) + 1
end

-- A job's concurrency key (the one place that decides where it lives: keyed concurrency, SPEC §9,
-- stores it as the record's `ckey`): its `ckey`, its `key`, else its context's concurrency_key.
local function job_key_of(ckey, kfield, ctx)
  if ckey then return ckey end
  if kfield then return kfield end
  if ctx then
    local ok, doc = pcall(cjson.decode, ctx)
    if ok and type(doc) == 'table' and doc.concurrency_key ~= nil then return tostring(doc.concurrency_key) end
  end
  return nil
end

-- An operator's filter (the job listing and the bulk actions read it alike) on a record's fields
-- {_, created, ckey, key, ctx, error}: created in [since, till) (nil: open), the concurrency key
-- ('' any), and `needle` in the error ('' any; lower case, as the error is lowered here).
local function filter_passes(f, since, till, key, needle)
  local created = tonumber(f[2]) or 0
  if since and created < since then return false end
  if till and created >= till then return false end
  if key ~= '' and job_key_of(f[3], f[4], f[5]) ~= key then return false end
  if needle ~= '' and not (f[6] and string.find(string.lower(f[6]), needle, 1, true)) then return false end
  return true
end
