-- pending|retry -> active for up to `n` jobs of one type, in priority then FIFO order.
-- First, due delayed/retry jobs move to the ready set, and active jobs whose lease lapsed
-- (their worker vanished) go back to retry, or to dead after max_deliver; a keyed job whose
-- lease lapsed follows its key's stale policy (fail-stale: failed, slot freed; requeue-stale:
-- delivered again, keeping the slot). A keyed job whose key is at max_active waits in kw:K
-- until a slot frees. With a rate limit, at most `rate` jobs start per `period` (sliding).
-- ARGV: P, JP, instance, n, ack_wait_ms, max_deliver, rate (0 none), period_ms[, halt token]
-- Returns {now, next_due_ms or -1, {id, payload, deliveries, lease, deadline, ctx, created, ...}}
local P, JP, inst = ARGV[1], ARGV[2], ARGV[3]
local n, ack, max_deliver = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local rate, period = tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
trim_once = true -- one XTRIM of the event stream for the whole batch (lib.lua)

-- A claim sent right behind a blocking wait (Broker.wait_then_claim) runs when the wait ends,
-- also when its fetch loop was told to stop meanwhile: the loop's halt key says so, and then
-- nothing is claimed.
-- An instance found dead (release_instance.lua) is halted too: Redis may run the claim a killed
-- process queued behind its wait before it notices the closed connection.
-- A paused type (pause.lua) claims nothing, and nothing falls due: resume wakes the fetch loops.
-- One EXISTS asks both (a command less per claim); the halt keys are told apart only when one is set.
local stop_keys = {P .. 'paused'}
if ARGV[9] then stop_keys = {P .. 'paused', P .. 'halt:' .. ARGV[9], P .. 'halt:' .. inst} end
if redis.call('EXISTS', unpack(stop_keys)) > 0 then
  if ARGV[9] and redis.call('EXISTS', stop_keys[2], stop_keys[3]) > 0 then
    -- The wait this claim sat behind is over. The halt's own wake-up (halt.lua) ended it when
    -- the wait popped its hw key; else it may have taken a producer's wake-up from the marker,
    -- which goes on to a live waiter.
    local own = P .. 'hw:' .. ARGV[9]
    if redis.call('DEL', own) == 1 or redis.call('EXISTS', stop_keys[2]) == 0 then wake(P) end
  end
  return {now, -1, {}}
end
local ready, active = P .. 'ready', P .. 'active'

-- The first delayed job and the first lease to lapse: when neither is due (the usual case),
-- that is all this claim reads of the two sets, and they give the next wake-up time too.
local first_sched = redis.call('ZRANGE', P .. 'sched', 0, 0, 'WITHSCORES')
if first_sched[2] and tonumber(first_sched[2]) <= now then
  local due = redis.call('ZRANGEBYSCORE', P .. 'sched', '-inf', now, 'LIMIT', 0, 1000)
  redis.call('ZREM', P .. 'sched', unpack(due))
  for _, id in ipairs(due) do
    -- pcall and tonumber: a member or record another program wrote is dropped, not an error
    -- that would stop every claim of the type (readers report such records as corrupt)
    local score = tonumber(rec(redis.pcall('HGET', JP .. id, 'score')))
    if score then redis.call('ZADD', ready, score, id) end
  end
  first_sched = redis.call('ZRANGE', P .. 'sched', 0, 0, 'WITHSCORES')
end

local first_active = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES')
local lapsed = {}
local hc = {} -- for the history: queue waits, and what lapsed leases became
if first_active[2] and tonumber(first_active[2]) <= now then
  lapsed = redis.call('ZRANGEBYSCORE', active, '-inf', now, 'LIMIT', 0, 100)
end
for _, id in ipairs(lapsed) do
  redis.call('ZREM', active, id)
  local jk = JP .. id
  local f = rec(redis.pcall('HMGET', jk, 'state', 'deliveries', 'started', 'worker', 'score', 'idem', 'deadline',
                           'ckey', 'kstale', 'ctx', 'dbase', 'gone')) or {}
  if f[1] == 'active' then
    local err = 'lease expired: instance ' .. tostring(f[4]) .. ' stopped renewing it'
    if f[12] then -- ended by release_instance.lua: why
      err = f[12]
      redis.call('HDEL', jk, 'gone')
    end
    local hist = history_with(jk, f[2], f[3], now, 'lease-expired', f[4], err)
    local dl = tonumber(f[7])
    local ckey = f[8]
    if ckey then redis.call('HINCRBY', P .. 'kstat:' .. ckey, 'stale_takeovers', 1) end
    if dl and now >= dl then
      redis.call('HSET', jk, 'state', 'expired', 'history', hist, 'finished', now,
        'error', 'deadline passed while its worker was gone')
      finish(P, jk, id, 'expired', now, f[6], ckey)
      emit(P, 'expired', id, 'expired', f[2], f[10])
    elseif (tonumber(f[2]) or max_deliver) - (tonumber(f[11]) or 0) >= max_deliver then -- dbase: see revive.lua
      redis.call('HSET', jk, 'state', 'dead', 'history', hist, 'finished', now,
        'error', err .. '; max_deliver (' .. max_deliver .. ') reached')
      finish(P, jk, id, 'dead', now, f[6], ckey)
      hc.d = (hc.d or 0) + 1
      emit(P, 'dead', id, 'dead', f[2], f[10], 'error', err)
    elseif ckey and f[9] ~= 'requeue-stale' then
      err = 'stale: ' .. err .. '; its key slot was taken over (stale_policy fail-stale)'
      redis.call('HSET', jk, 'state', 'failed', 'history', hist, 'finished', now, 'error', err)
      finish(P, jk, id, 'failed', now, f[6], ckey)
      hc.f = (hc.f or 0) + 1
      emit(P, 'failed', id, 'failed', f[2], f[10], 'error', err)
    else
      if ckey then redis.call('HSET', jk, 'kheld', 1) end -- requeue-stale: keeps its slot
      redis.call('HSET', jk, 'state', 'retry', 'history', hist, 'error', err)
      redis.call('ZADD', ready, tonumber(f[5]) or 0, id)
      hc.r = (hc.r or 0) + 1
      emit(P, 'lease-expired', id, 'retry', f[2], f[10], 'error', err)
    end
  end
end

local rate_next = nil
if rate > 0 then
  local rk = P .. 'rate'
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - period)
  local left = rate - redis.call('ZCARD', rk)
  if left <= 0 then
    local first = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
    rate_next = tonumber(first[2]) + period
    n = 0
  elseif left < n then
    n = left
  end
end

local out = {}
local leased = {} -- score/member pairs for the active set, added in one call
local lease_until_ms = now + ack
local started, lease_until = int_s(now), int_s(lease_until_ms) -- formatted once for the batch
local popped = {}
if n > 0 then popped = redis.call('ZPOPMIN', ready, n) end
for i = 1, #popped, 2 do
  local id = popped[i]
  local jk = JP .. id
  local f = rec(redis.pcall('HMGET', jk, 'state', 'payload', 'deliveries', 'deadline', 'ctx', 'created', 'idem',
                           'ckey', 'kmax', 'kheld', 'lease', 'run_at')) or {}
  local ckey = f[8]
  if f[1] == 'pending' or f[1] == 'retry' then
    local dl = tonumber(f[4])
    local slot = true
    if dl and now >= dl then
      redis.call('HSET', jk, 'state', 'expired', 'finished', now, 'error', 'deadline passed before it ran')
      finish(P, jk, id, 'expired', now, f[7], ckey)
      emit(P, 'expired', id, 'expired', f[3], f[5])
      slot = false
    elseif ckey and f[10] then
      redis.call('HDEL', jk, 'kheld') -- requeue-stale: it still holds its slot
    elseif ckey then
      local ka = P .. 'ka:' .. ckey
      if redis.call('SCARD', ka) >= (tonumber(f[9]) or 1) then
        redis.call('ZADD', P .. 'kw:' .. ckey, popped[i + 1], id) -- waits for a slot of its key
        slot = false
      else
        redis.call('SADD', ka, id)
      end
    end
    if slot then
      local d = (tonumber(f[3]) or 0) + 1
      local lease = (tonumber(f[11]) or 0) + 1
      local d_s = int_s(d)
      if d == 1 then -- queue wait, first delivery only: from creation, or from run_at when delayed
        hist_time(hc, 'W', now - math.max(tonumber(f[6]) or now, tonumber(f[12]) or 0))
      end
      redis.call('HSET', jk, 'state', 'active', 'deliveries', d_s, 'started', started, 'worker', inst,
                 'lease', int_s(lease))
      leased[#leased + 1] = lease_until
      leased[#leased + 1] = id
      if rate > 0 then redis.call('ZADD', P .. 'rate', now, id .. ':' .. lease) end
      if not batch_event(id, d_s, f[5]) then emit(P, 'started', id, 'active', d_s, f[5], 'instance', inst) end
      out[#out + 1] = id
      out[#out + 1] = f[2]
      out[#out + 1] = d
      out[#out + 1] = lease
      out[#out + 1] = f[4] or ''
      out[#out + 1] = f[5] or ''
      out[#out + 1] = f[6] or ''
    end
  end
end
if #leased > 0 then call_spread('ZADD', active, leased) end
flush_batch_events(P, 'started', 'active', 'instance', inst)
if next(hc) then hist_add(P, now, hc) end
-- Wake another idle instance when work remains that it could start now (never while
-- rate-limited: the waiters would only spin until the window opens). A ZPOPMIN that
-- returned fewer than `n` emptied the ready set: no need to ask.
if rate_next == nil and #popped >= 2 * n and redis.call('EXISTS', ready) == 1 then wake(P) end

-- The next time something falls due: a delayed job, a lease (those taken above run to
-- now + ack), or the rate window. Nothing above adds delayed jobs.
local next_due = -1
if first_sched[2] then next_due = tonumber(first_sched[2]) end
if #lapsed > 0 then first_active = redis.call('ZRANGE', active, 0, 0, 'WITHSCORES') end
local lease_due = tonumber(first_active[2])
if #leased > 0 and (lease_due == nil or lease_until_ms < lease_due) then lease_due = lease_until_ms end
if lease_due and (next_due < 0 or lease_due < next_due) then next_due = lease_due end
if rate_next and (next_due < 0 or rate_next < next_due) then next_due = rate_next end
trim_events(P)
return {now, next_due, out}
