-- Dependencies between jobs of any types, so across Redis Cluster slots (docs/workflows.md). No op
-- touches two slots: `register` runs in the dependency's slot, `settle` in the dependent's, `claim`
-- and `done` on one type's outbox. A caller (the producer, then a daemon's releaser) carries the
-- facts between slots, and every op is idempotent, so a step repeated after a crash changes nothing.
-- Keys, S = 'js:{tag}:' of the job: S..'dp:'..id the ids of the jobs waiting on `id` (dependents);
-- S..'dd:'..id what each dependency of `id` ended as (dependency id -> outcome; 'gate' -> the
-- producer finished creating `id`).
-- ARGV: op, P, JP, then the op's own (below).
local op, P, JP = ARGV[1], ARGV[2], ARGV[3]
local S = string.sub(JP, 1, -3)
local SETTLED = {completed = true, failed = true, dead = true, cancelled = true, expired = true, dismissed = true}
local DD_TTL_MS = DEFAULT_RETENTION.dead_retention_ms -- kept while a dependent may still run (refreshed per write)

if op == 'register' then
  -- ARGV: dependency id, dependent id. Adds the dependent to the dependency's set and marks the
  -- dependency so that its settle writes a notice (lib.lua notify_settled). Returns {dependency state}
  -- ('gone': no such job): a settled one the caller reports to the dependent at once (`settle`).
  local dep, child = ARGV[4], ARGV[5]
  local jk = JP .. dep
  local st = redis.call('HGET', jk, 'state')
  if not st then return {'gone'} end
  local dp = S .. 'dp:' .. dep
  redis.call('SADD', dp, child)
  redis.call('HSET', jk, 'notify', '1')
  local ttl = redis.call('PTTL', jk)
  if ttl > 0 then redis.call('PEXPIRE', dp, ttl) end
  return {st}
end

if op == 'settle' then
  -- ARGV: dependent id, dependency id (or 'gate'), the dependency's outcome (a finished state).
  -- Recorded once per (dependency, outcome); a counted outcome (completed; any under "run") takes
  -- one off deps_left and the last one releases the job: waiting -> pending. A failed one cancels
  -- it ("cancel": its own dependents hear of it through its notice, so it goes on transitively)
  -- or keeps it waiting ("wait": until the dependency, retried or replayed, completes).
  -- Returns {result, state}: released | counted | cancelled | blocked | dup | late | gone.
  local id, dep, outcome = ARGV[4], ARGV[5], ARGV[6]
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'dep_fail', 'score', 'delay_ms', 'ctx')
  if not f[1] then return {'gone', ''} end
  local policy = f[2] or 'cancel'
  local function counts(o) return o == 'completed' or (policy == 'run' and SETTLED[o] == true) end
  local dd = S .. 'dd:' .. id
  local prev = redis.call('HGET', dd, dep)
  if prev == outcome or (prev and counts(prev)) then return {'dup', f[1]} end
  redis.call('HSET', dd, dep, outcome)
  redis.call('PEXPIRE', dd, DD_TTL_MS)
  if f[1] ~= 'waiting' then return {'late', f[1]} end
  if counts(outcome) then
    if redis.call('HINCRBY', jk, 'deps_left', -1) > 0 then return {'counted', 'waiting'} end
    if not legal('waiting', 'pending') then return {'invalid', 'waiting'} end
    local now = now_ms()
    redis.call('ZREM', P .. 'waiting', id)
    local delay = tonumber(f[4]) or 0
    if delay > 0 then -- a delay counts from the release
      redis.call('HSET', jk, 'state', 'pending', 'run_at', now + delay)
      redis.call('ZADD', P .. 'sched', now + delay, id)
    else
      redis.call('HSET', jk, 'state', 'pending')
      redis.call('ZADD', P .. 'ready', f[3], id)
    end
    wake(P)
    emit(P, 'released', id, 'pending', 0, f[5])
    return {'released', 'waiting'}
  end
  if policy == 'cancel' then
    return cancel_job(P, JP, id, 'dependency ' .. dep .. ' ended ' .. outcome, '', 'dependency', '')
  end
  emit(P, 'dependency-failed', id, 'waiting', 0, f[5], 'dependency', dep, 'outcome', outcome)
  return {'blocked', 'waiting'}
end

if op == 'claim' then
  -- ARGV: n, lease ms. Up to n notices of the outbox that nobody is delivering (score <= now), each
  -- leased for `lease ms` (a deliverer that dies leaves it to another after that). Returns per
  -- notice: the notice ('<id> <state>'), the job's batch id ('' none), '1' when it has dependents.
  local ob = P .. 'outbox'
  local now = now_ms()
  local got = redis.call('ZRANGEBYSCORE', ob, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
  local out = {}
  for _, m in ipairs(got) do
    redis.call('ZADD', ob, now + tonumber(ARGV[5]), m)
    local id = string.match(m, '^(%S+)')
    out[#out + 1] = m
    out[#out + 1] = rec(redis.pcall('HGET', JP .. id, 'batch')) or ''
    out[#out + 1] = tostring(redis.call('EXISTS', S .. 'dp:' .. id))
  end
  return out
end

if op == 'done' then
  -- ARGV: notices. Every dependent and the batch of each heard of it: it goes, and the job's
  -- dependents set lives as long as its record.
  for i = 4, #ARGV do
    redis.call('ZREM', P .. 'outbox', ARGV[i])
    local id = string.match(ARGV[i], '^(%S+)')
    local ttl = redis.call('PTTL', JP .. id)
    if ttl > 0 then redis.call('PEXPIRE', S .. 'dp:' .. id, ttl) end
  end
  return 1
end

if op == 'sweep' then
  -- ARGV: age ms. Waiting jobs older than that whose gate never opened (their producer died while
  -- creating them) are cancelled; the others are looked at again an `age` later. Returns the count cancelled.
  local now = now_ms()
  local old = redis.call('ZRANGEBYSCORE', P .. 'waiting', '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 100)
  local n = 0
  for _, id in ipairs(old) do
    if redis.call('HEXISTS', S .. 'dd:' .. id, 'gate') == 0 then
      cancel_job(P, JP, id, 'abandoned: its producer never finished creating it', '', 'janitor', '')
      n = n + 1
    else
      redis.call('ZADD', P .. 'waiting', now, id)
    end
  end
  return n
end

return redis.error_reply('deps.lua: unknown op ' .. tostring(op))
