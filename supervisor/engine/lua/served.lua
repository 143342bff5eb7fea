-- Who serves one job type: what an instance's presence heartbeat says about it (supervisor.engine.serving).
-- KEYS[1]: the type's served hash. ARGV[1]: instance id; ARGV[2]: 'serve' | 'stop' | 'error' | 'clear';
-- ARGV[3]: how long the statement holds, in ms ('serve', 'error'); ARGV[4]: the load error ('error').
-- Fields: 'i:<instance>' = until when (Redis ms) that instance serves the type unless it says so again;
-- 'e:<instance>' = '<until ms>|<load error>' for a file of that name that failed to load there;
-- 'last_instance' / 'last_ms': the last instance that served the type, and when.
-- Times are Redis's own (TIME), so hosts whose clocks disagree still agree on who is live.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, inst, what = KEYS[1], ARGV[1], ARGV[2]
if what == 'serve' then
  redis.call('HSET', key, 'i:' .. inst, string.format('%d', now + tonumber(ARGV[3])),
             'last_instance', inst, 'last_ms', string.format('%d', now))
elseif what == 'stop' then
  if redis.call('HDEL', key, 'i:' .. inst) == 1 then
    redis.call('HSET', key, 'last_instance', inst, 'last_ms', string.format('%d', now))
  end
elseif what == 'error' then
  redis.call('HSET', key, 'e:' .. inst, string.format('%d', now + tonumber(ARGV[3])) .. '|' .. ARGV[4])
elseif what == 'clear' then
  redis.call('HDEL', key, 'e:' .. inst)
else
  return redis.error_reply('served.lua: unknown action ' .. tostring(what))
end
-- Forget what instances that stopped renewing it (crashed, or gone) said.
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local kind = string.sub(all[i], 1, 2)
  if kind == 'i:' or kind == 'e:' then
    local till = tonumber(string.match(all[i + 1], '^%d+'))
    if till == nil or till < now then redis.call('HDEL', key, all[i]) end
  end
end
-- Remembered for 30 days after the last statement (when and where the type was last served).
redis.call('PEXPIRE', key, 2592000000)
return now
