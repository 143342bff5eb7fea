-- The leases one dead instance held on jobs of this type end now (SPEC §4: an instance found
-- gone on its own host and boot). No state changes here: each of its active jobs gets a new
-- lease token, so a late heartbeat or settle of the dead holder is refused (fenced), and a lease
-- that lapses now; the next claim of the type, woken here, reaps it as every lapsed lease (a
-- delivery counted against max_deliver, the key's stale policy, history, events: claim.lua).
-- A lease already lapsed is left to that claim, so two instances releasing at once do it once.
-- The instance is halted (claim.lua): a claim its process queued behind a wait before it died
-- claims nothing when Redis runs it late (woken by this very release, or by a producer).
-- ARGV: P, JP, instance, reason (the error the reaped attempt records: who found what)
-- Returns the ids whose lease ended.
local P, JP, inst, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local HALT_DEAD_MS = '600000' -- outlasts any wait (max_idle_wait <= 60 s) a dead process left queued
local now = now_ms()
redis.call('SET', P .. 'halt:' .. inst, 1, 'PX', HALT_DEAD_MS)
local active = P .. 'active'
-- Every instance's jobs of the type: at most the sum of their concurrency limits.
local members = redis.call('ZRANGEBYSCORE', active, '(' .. now, '+inf')
local out = {}
for _, id in ipairs(members) do
  local jk = JP .. id
  local f = rec(redis.pcall('HMGET', jk, 'state', 'worker')) or {}
  if f[1] == 'active' and f[2] == inst then
    redis.call('HINCRBY', jk, 'lease', 1)
    redis.call('HSET', jk, 'gone', reason)
    redis.call('ZADD', active, now, id)
    out[#out + 1] = id
  end
end
if #out > 0 then wake(P) end
return out
