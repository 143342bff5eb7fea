-- Pause or resume one job type across every instance. A paused type still accepts enqueues;
-- claim.lua claims nothing while P .. 'paused' exists (no TTL: it survives restarts). Resume
-- wakes the type's idle fetch loops. The change is an event on the type's stream, with who asked.
-- ARGV: P, JP, 'pause' | 'resume', source (cli | api | client), by (the API token's name or '')
-- Returns {changed (1 | 0), paused at ms or '', source, by}: the flag as it stands after the call.
local P, what, source, by = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local key = P .. 'paused'
local changed = 0
if what == 'pause' then
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'at', int_s(now_ms()), 'source', source, 'by', by)
    changed = 1
  end
elseif what == 'resume' then
  changed = redis.call('DEL', key)
  if changed == 1 then wake(P) end
else
  return redis.error_reply('pause.lua: unknown action ' .. tostring(what))
end
if changed == 1 then
  redis.call('XADD', P .. 'events', 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'event', what == 'pause' and 'paused' or 'resumed',
    'id', '', 'state', '', 'attempt', '0', 'source', source, 'by', by)
end
local f = redis.call('HMGET', key, 'at', 'source', 'by')
return {changed, f[1] or '', f[2] or '', f[3] or ''}
