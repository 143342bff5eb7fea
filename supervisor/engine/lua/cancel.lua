-- pending|retry -> cancelled at once; active: cancellation requested (the instance holding
-- the job is told at once on its cancel channel, and again on its next heartbeat), or, with
-- a lease token, active -> cancelled when the worker reports that the handler stopped.
-- ARGV: P, JP, id, reason, lease ('' for a producer/operator request), source, by (who asked:
--   recorded in the job's history for a producer/operator request)
-- Returns {result, state}: result is 'cancelled' | 'requested' | 'invalid' | 'fenced' | 'gone'.
local P, JP, id, reason, lease, source, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
return cancel_job(P, JP, id, reason, lease, source, by)
