"""The queue engine: Redis keys, the Lua transition scripts, the wire and transport, the broker, records and states."""
