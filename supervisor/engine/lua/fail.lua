-- active -> retry | failed | dead for a batch of jobs, fenced by lease token.
-- A job whose cancellation was requested while it ran ends cancelled instead of retrying.
-- ARGV: P, JP, max_deliver, count, then per job: id, lease, mode ('retry'|'permanent'), error, delay_ms,
--   last unsent progress JSON or '', stack trace or ''
-- Returns per job: the new state, or 'fenced:<state>'.
local P, JP, max_deliver, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])

-- Only the newest TRACES_KEPT attempts keep their stack trace (each at most 16 KiB), so a job
-- that fails many times keeps a bounded record; older attempts keep their error line.
local TRACES_KEPT = 3
local function fewer_traces(h)
  local n = 0
  for _ in string.gmatch(h, '"traceback":') do n = n + 1 end  -- (in a JSON string it would be \"traceback\")
  if n < TRACES_KEPT then return h end
  local ok, entries = pcall(cjson.decode, h)
  if not ok or type(entries) ~= 'table' then return h end  -- not ours to repair
  local kept = 0
  for i = #entries, 1, -1 do
    local e = entries[i]
    if type(e) == 'table' and e.traceback ~= nil then
      kept = kept + 1
      if kept >= TRACES_KEPT then e.traceback = nil end
    end
  end
  return cjson.encode(entries)
end

local now = now_ms()
local out = {}
local hc = {} -- run times and outcomes for the history
local HIST_FIELD = {retry = 'r', failed = 'f', dead = 'd'}
for i = 0, n - 1 do
  local b = 5 + i * 7
  local id, lease, mode, err, delay = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4])
  local progress, tb = ARGV[b + 5], ARGV[b + 6]
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'lease', 'deliveries', 'started', 'worker', 'idem', 'cancel', 'ckey',
                       'ctx', 'dbase')
  if f[1] ~= 'active' or f[2] ~= lease then
    out[#out + 1] = 'fenced:' .. tostring(f[1] or 'gone')
  else
    local d = tonumber(f[3])
    local to, outcome = 'retry', 'failed'
    if f[7] then to, outcome = 'cancelled', 'cancelled'
    elseif mode == 'permanent' then to, outcome = 'failed', 'permanent'
    elseif d - (tonumber(f[10]) or 0) >= max_deliver then to = 'dead' end -- dbase: see revive.lua
    local h = nil  -- history_with reads it, unless a new trace may push out an old one
    if tb == '' then
      tb = nil
    else
      h = redis.call('HGET', jk, 'history')
      if h then h = fewer_traces(h) end
    end
    local hist = history_with(jk, d, f[4], now, outcome, f[5], err, h, tb)
    redis.call('ZREM', P .. 'active', id)
    hist_time(hc, 'R', now - (tonumber(f[4]) or now))
    local hf = HIST_FIELD[to]
    if hf then hc[hf] = (hc[hf] or 0) + 1 end
    if progress ~= '' then redis.call('HSET', jk, 'progress', progress) end
    if to == 'retry' then
      redis.call('HSET', jk, 'state', 'retry', 'error', err, 'history', hist, 'run_at', now + delay)
      redis.call('ZADD', P .. 'sched', now + delay, id)
      key_leave(P, id, f[8], false)
      wake(P)
      emit(P, 'retry', id, 'retry', d, f[9], 'error', err, 'delay_ms', delay)
    else
      if to == 'dead' then err = err .. ' (max_deliver ' .. max_deliver .. ' reached)' end
      if to == 'cancelled' then err = f[7] end
      redis.call('HSET', jk, 'state', to, 'error', err, 'history', hist, 'finished', now)
      finish(P, jk, id, to, now, f[6], f[8])
      emit(P, to, id, to, d, f[9], 'error', err)
    end
    out[#out + 1] = to
  end
end
if next(hc) then hist_add(P, now, hc) end
return out
