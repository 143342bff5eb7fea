-- failed -> pending (operator `retry`) or dead -> pending (operator `replay`): the job
-- gets a fresh set of deliveries; its history is kept and records the action. Attempt numbers
-- keep counting (`deliveries` is never reset): `dbase` holds the deliveries made before the
-- revival, and max_deliver counts only those after it.
-- ARGV: P, JP, id, expected state ('failed' | 'dead'), event name ('retried' | 'replayed'),
--   source, by (who asked)
-- Returns {result, state}: 'pending' | 'invalid' | 'gone'.
local P, JP, id, expected, event, source, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
return revive_job(P, JP, id, expected, event, source, by)
