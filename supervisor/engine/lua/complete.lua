-- active -> completed for a batch of jobs, fenced by lease token.
-- ARGV: P, JP, count, then per job: id, lease, result JSON, last unsent progress JSON or ''
-- Returns per job: 'ok' | 'fenced:<state>' (the lease was taken over or the job moved on).
-- The index updates of every completed job are made once per batch (one ZREM, one ZADD).
local P, JP, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
trim_once = true -- one XTRIM of the event stream for the whole batch (lib.lua)
local ret = retention_ms(P, 'completed')
local now_s, ret_s = int_s(now), int_s(ret) -- formatted once for the batch
local out = {}
local done, parked, deadlines = {}, {}, {}
local hc = {} -- run-time buckets for the history
for i = 0, n - 1 do
  local b = 4 + i * 4
  local id, lease, result, progress = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local jk = JP .. id
  local f = redis.call('HMGET', jk, 'state', 'lease', 'deliveries', 'started', 'idem', 'ckey',
                       'deadline', 'ctx', 'notify')
  if f[1] ~= 'active' or f[2] ~= lease then
    out[#out + 1] = 'fenced:' .. tostring(f[1] or 'gone')
  else
    -- The completing attempt is not appended to `history`: a completed record's own `deliveries`,
    -- `started`, `finished` and `worker` are that attempt, and records.py reads it from them
    -- (the history JSON built per job was a fifth of this script's cost, and ~110 B per record).
    if progress ~= '' then
      redis.call('HSET', jk, 'state', 'completed', 'result', result, 'finished', now_s, 'progress', progress)
    else
      redis.call('HSET', jk, 'state', 'completed', 'result', result, 'finished', now_s)
    end
    redis.call('PEXPIRE', jk, ret_s)
    if f[5] then redis.call('PEXPIRE', P .. 'idem:' .. f[5], ret_s) end
    if f[7] then deadlines[#deadlines + 1] = id end
    done[#done + 1] = id
    hist_time(hc, 'R', now - (tonumber(f[4]) or now))
    parked[#parked + 1] = now_s
    parked[#parked + 1] = id
    key_leave(P, id, f[6], true)
    if f[9] then notify_settled(P, id, 'completed') end -- dependents or a batch wait on it
    if not batch_event(id, f[3], f[8], result) then -- one `completed` entry for the batch, below
      if #result <= EVENT_RESULT_MAX then
        emit(P, 'completed', id, 'completed', f[3], f[8], 'result', result)
      else -- bounded: a large result is read from the job, not carried by every event
        emit(P, 'completed', id, 'completed', f[3], f[8], 'result_bytes', #result)
      end
    end
    out[#out + 1] = 'ok'
  end
end
if #done > 0 then
  hc.c = #done
  hist_add(P, now, hc)
  call_spread('ZREM', P .. 'active', done)
  local idx = P .. 'st:completed'
  call_spread('ZADD', idx, parked)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now - ret)
  if #deadlines > 0 then call_spread('ZREM', P .. 'deadline', deadlines) end
end
flush_batch_events(P, 'completed', 'completed')
trim_events(P)
return out
