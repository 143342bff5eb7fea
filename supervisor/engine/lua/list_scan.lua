-- A read for the job listing (supervisor.operators.listing), no transition: walk one index set of one
-- type from a cursor and return the entries whose record passes the filter, so a selective filter
-- over a million records reads each record inside Redis instead of in a round trip of its own.
-- KEYS[1]: the index set. ARGV: JP, desc ('1': newest first), cursor score ('' from the start),
--   cursor id, walk (entries at most), want (stop after this many matches), state ('' any),
--   since ms, until ms ('' none: on `created`), key ('' any), floor ('' none: with desc, no entry
--   scored below it), check ('1': read the records; '0': every entry matches), error text in
--   lower case ('' any: else a substring of the job's error, ASCII letters in any case)
-- Returns {walked, last score ('' none walked), last id, exhausted (1: the set ends within the walk),
--   {score, id, ...} of the matches}
local idx, JP, desc = KEYS[1], ARGV[1], ARGV[2] == '1'
local cur_score, cur_id, walk, want = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local state, since, till, key = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local floor, check, needle = tonumber(ARGV[11]), ARGV[12] == '1', ARGV[13] or ''

-- Where to start: right after the cursor's entry when this set holds it, else at its score.
local start = 0
if cur_score then
  local rank
  if desc then rank = redis.call('ZREVRANK', idx, cur_id) else rank = redis.call('ZRANK', idx, cur_id) end
  if rank then
    start = rank + 1
  elseif desc then
    start = redis.call('ZCOUNT', idx, '(' .. ARGV[3], '+inf')
  else
    start = redis.call('ZCOUNT', idx, '-inf', '(' .. ARGV[3])
  end
end
local rows
if desc then
  rows = redis.call('ZREVRANGE', idx, start, start + walk - 1, 'WITHSCORES')
else
  rows = redis.call('ZRANGE', idx, start, start + walk - 1, 'WITHSCORES')
end

local function passes(id)
  if not check then return true end
  local f = rec(redis.pcall('HMGET', JP .. id, 'state', 'created', 'ckey', 'key', 'ctx', 'error'))
  if not f or not f[1] then return false end -- trimmed since it was indexed, or not a hash
  if state ~= '' and f[1] ~= state then return false end
  return filter_passes(f, since, till, key, needle)
end

local out, walked, last_score, last_id = {}, 0, '', ''
local exhausted = #rows < 2 * walk and 1 or 0
for i = 1, #rows, 2 do
  local id, score = rows[i], tonumber(rows[i + 1])
  if desc and floor and score < floor then exhausted = 1; break end
  -- an entry tied with the cursor that comes before it (another set's entry, read from the score)
  local before = cur_score and score == cur_score and ((desc and id >= cur_id) or (not desc and id <= cur_id))
  walked = walked + 1
  last_score, last_id = rows[i + 1], id
  if not before and passes(id) then
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = id
    if #out >= 2 * want then
      if i + 1 < #rows then exhausted = 0 end
      break
    end
  end
end
return {walked, last_score, last_id, exhausted, out}
