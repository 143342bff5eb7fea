-- Stop a fetch loop's wait (SIGTERM, its type retired): the claim queued behind the wait
-- (Broker.wait_then_claim with this halt token) claims nothing, and the wait ends at once.
-- The wake-up goes to a key only that wait blocks on (hw:<token>), not to the type's marker:
-- with several instances idle on the type, Redis hands the marker to the one that waited
-- longest, so a wake-up through it could end another instance's wait instead of this one.
-- One script writes both keys, so the claim behind the wait sees the halt and its wake-up
-- together (claim.lua tells the halt's own wake-up from a producer's by the second).
-- ARGV: P, JP, halt token, ttl_ms (both keys expire: a wait that already ended pops neither)
local P, token, ttl = ARGV[1], ARGV[3], ARGV[4]
redis.call('SET', P .. 'halt:' .. token, 1, 'PX', ttl)
redis.call('ZADD', P .. 'hw:' .. token, 0, 'm')
redis.call('PEXPIRE', P .. 'hw:' .. token, ttl)
return 1
