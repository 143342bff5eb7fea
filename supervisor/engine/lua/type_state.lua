-- A job type's published metadata and who serves it, read at once (supervisor.engine.serving).
-- KEYS[1]: the type's meta hash; KEYS[2]: its served hash (same hash tag).
-- Returns {meta fields, served fields, Redis time in ms} (the reader drops lapsed statements).
local t = redis.call('TIME')
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
