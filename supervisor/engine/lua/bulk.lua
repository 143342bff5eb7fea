-- An operator's action on every job of one type that matches a filter, one bounded slice per
-- call (supervisor.engine.control drives it): scans at most `batch` entries of one index set
-- from a cursor, and acts on each matching job with the single-job action (actions.lua), so
-- each job's history records it as a single action would. `delete` (and `purge`, its form for
-- finished records) removes the record, its log and its index entries; an active job is never deleted.
-- The cursor is a score and how many entries at that score the scan keeps passing: entries the
-- action took out of the set are gone, so a slice never skips or repeats an entry.
-- ARGV: P, JP, action (retry | replay | dismiss | cancel | delete | purge), index part (ready,
--   sched, active, st:<state>), cursor score ('-inf' to start), cursor skip, batch,
--   states (',s1,s2,': the states acted on), since ms, until ms ('' for none: on `created`),
--   key ('' any), error text in lower case ('' any), dry ('1' counts only), most (act on at
--   most this many), source, by, reason (for cancel)
-- Returns {matched, done, skipped, next score ('' at the end), next skip, {state, count, ...}}
local P, JP, action, part = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur_score, cur_skip, batch = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local states, since, till = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])
local key, needle, dry, most = ARGV[11], ARGV[12], ARGV[13] == '1', tonumber(ARGV[14])
local source, by, reason = ARGV[15], ARGV[16], ARGV[17]
local LP = string.sub(JP, 1, -3) .. 'log:' -- js:{tag}:j: -> js:{tag}:log:
local FINISHED_STATES = {completed = true, failed = true, dead = true, cancelled = true, expired = true,
                         dismissed = true}

local function delete_job(id, st)
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'idem', 'ckey', 'deliveries', 'ctx', 'notify')
  if f[1] ~= st or st == 'active' then return 'invalid' end
  unqueue(P, id)
  redis.call('ZREM', P .. 'deadline', id)
  redis.call('ZREM', P .. 'st:' .. st, id)
  key_leave(P, id, f[3], true)
  if f[2] and redis.call('GET', P .. 'idem:' .. f[2]) == id then redis.call('DEL', P .. 'idem:' .. f[2]) end
  redis.call('DEL', jk, LP .. id)
  -- a live job others wait on (dependents, a batch) will never settle now: they hear it as cancelled
  -- (a finished one told them when it finished)
  if f[6] and not FINISHED_STATES[st] then notify_settled(P, id, 'cancelled') end
  emit(P, 'deleted', id, st, f[4], f[5], 'source', source, 'by', by)
  return 'deleted'
end

-- The action on one job; returns (acted, still in the scanned set).
local function act(id, st)
  local r
  if action == 'retry' then r = revive_job(P, JP, id, 'failed', 'retried', source, by)[1]
  elseif action == 'replay' then r = revive_job(P, JP, id, 'dead', 'replayed', source, by)[1]
  elseif action == 'dismiss' then r = dismiss_job(P, JP, id, source, by)[1]
  elseif action == 'cancel' then r = cancel_job(P, JP, id, reason, '', source, by)[1]
  else r = delete_job(id, st) end
  if r == 'pending' or r == 'dismissed' or r == 'cancelled' or r == 'deleted' then return true, false end
  if r == 'requested' then return true, true end
  return false, true
end

local rows = redis.call('ZRANGEBYSCORE', P .. part, cur_score, '+inf', 'WITHSCORES', 'LIMIT', cur_skip, batch)
local matched, done, skipped = 0, 0, 0
local by_state = {}
local last, kept_at_last, seen = nil, 0, 0
for i = 1, #rows, 2 do
  if not dry and done >= most then break end
  local id, score = rows[i], rows[i + 1]
  seen = seen + 1
  local kept = true
  local f = rec(redis.pcall('HMGET', JP .. id, 'state', 'created', 'ckey', 'key', 'ctx', 'error')) or {}
  local st = f[1]
  if st and string.find(states, ',' .. st .. ',', 1, true) and filter_passes(f, since, till, key, needle) then
    matched = matched + 1
    by_state[st] = (by_state[st] or 0) + 1
    if not dry then
      local acted
      acted, kept = act(id, st)
      if acted then done = done + 1 else skipped = skipped + 1 end
    end
  end
  if score ~= last then last, kept_at_last = score, 0 end
  if kept then kept_at_last = kept_at_last + 1 end
end
local counts = {}
for st, c in pairs(by_state) do counts[#counts + 1] = st; counts[#counts + 1] = c end
if last == nil or (seen == #rows / 2 and #rows / 2 < batch) then
  return {matched, done, skipped, '', 0, counts} -- the end of the set
end
if last == cur_score then kept_at_last = kept_at_last + cur_skip end
return {matched, done, skipped, last, kept_at_last, counts}
