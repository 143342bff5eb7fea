-- dead -> dismissed: an operator gives up on a dead job.
-- ARGV: P, JP, id, source, by (who asked: recorded in the job's history)
-- Returns {result, state}: 'dismissed' | 'invalid' | 'gone'.
local P, JP, id, source, by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
return dismiss_job(P, JP, id, source, by)
