"""The `control` section of `job-supervisor bench` (issue 19): what queue control and history cost.

- `history`: the per-job Redis cost of the per-minute history counters. The same jobs go
  through enqueue (one at a time: the hot path), claim and complete (batches of 10) twice, with
  the real scripts and with the scripts' history helpers made no-ops; the difference in script
  time (INFO commandstats, `evalsha` usec) and in commands per job is the counters' cost. Also
  the memory of one type's history hashes.
- `bulk_replay`: `bulk_jobs` dead jobs, seeded by a Lua loader (no daemon), replayed by one bulk
  action: the rate, the longest script call as the client timed it, and the longest command
  Redis itself logged (SLOWLOG, threshold 1 ms).
- `listing`: `list_records` finished records seeded by the loader, then the admin API's server
  time (in-process ASGI, no network) for the overview's reads (`GET /types`, `GET /history`) and
  for `/jobs` pages: the first page, a page deep in the set by cursor, a time-range filter,
  and a filter that matches nothing (it walks its bounded scan and answers with a cursor).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from supervisor.engine import keys
from supervisor.engine.broker import Broker, NewJob, connect, enqueue_call
from supervisor.engine.scripts import script_source
from supervisor.engine.wire import Script
from supervisor_bench.harness import Bench

CONTROL_TYPE = "bench.control"  # never served: its records are written by SEED
#: Writes `count` finished records of one type and indexes them (one call: at most 10,000).
SEED = Script("""
local P, JP, tag, state, start, count, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7])
local spacing = tonumber(ARGV[9]) -- ms between two records: the set spans the last 24 h
local members = {}
for i = start, start + count - 1 do
  local id = tag .. '-' .. string.format('%016x', i)
  local finished = now - 86400000 + i * spacing
  redis.call('HSET', JP .. id, 'name', ARGV[8], 'state', state, 'payload', '{"n":' .. i .. '}',
    'created', string.format('%d', finished - 250), 'started', string.format('%d', finished - 100),
    'finished', string.format('%d', finished), 'deliveries', '3', 'score', string.format('%d', i),
    'error', 'ValueError: seeded failure ' .. (i % 7), 'ctx', '{}')
  members[#members + 1] = finished
  members[#members + 1] = id
  if #members >= 2000 then redis.call('ZADD', P .. 'st:' .. state, unpack(members)); members = {} end
end
if #members > 0 then redis.call('ZADD', P .. 'st:' .. state, unpack(members)) end
return count
""")


def _seed(b: Bench, state: str, n: int) -> float:
    """`n` records of CONTROL_TYPE in `state`; the seconds it took."""
    assert b.r is not None
    prefix, jp, tag = keys.queue_prefix(CONTROL_TYPE), keys.job_prefix(CONTROL_TYPE), keys.tag_for(CONTROL_TYPE)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    b.r.sadd(keys.TYPES_KEY, CONTROL_TYPE)
    for start in range(0, n, 10_000):
        b.r.eval(SEED.source, 1, prefix + "ready", prefix, jp, tag, state, start, min(10_000, n - start), now,
                 CONTROL_TYPE, max(86_400_000 // n, 1))
    return time.perf_counter() - started


def _without_history(name: str) -> Script:
    """The script `name` with the history helpers of lib.lua made no-ops."""
    src = script_source(name)
    for header in ("local function hist_add(P, now, counts)\n", "local function hist_time(counts, kind, ms)\n"):
        assert header in src, f"lib.lua's {header.strip()} changed: update the bench"
        src = src.replace(header, header + "  do return end\n")
    return Script(src)


async def _run_jobs(broker: Broker, scripts: dict[str, Script], n: int) -> None:
    """Enqueue `n` plain jobs one at a time, then claim and complete them 10 at a time."""
    prefix, jp = keys.queue_prefix(CONTROL_TYPE), keys.job_prefix(CONTROL_TYPE)
    route = [prefix + "ready"]
    for i in range(n):
        script_keys, args = enqueue_call(CONTROL_TYPE, [NewJob(keys.new_job_id(CONTROL_TYPE), f'{{"i":{i}}}')])
        await broker.transport.evalsha(scripts["enqueue"], script_keys, args)
    while True:
        _now, _due, flat = await broker.transport.evalsha(
            scripts["claim"], route, [prefix, jp, "bench", 10, 60_000, 3, 0, 0])
        if not flat:
            return
        items = [(flat[i], str(flat[i + 3]), "null", "") for i in range(0, len(flat), 7)]
        await broker.transport.evalsha(scripts["complete"], route,
                                       [prefix, jp, len(items), *[v for item in items for v in item]])


def measure_history_cost(b: Bench, n: int) -> dict[str, Any]:
    real = {name: Script(script_source(name)) for name in ("enqueue", "claim", "complete")}
    bare = {name: _without_history(name) for name in real}
    runs: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    for i in range(b.o.repeat):
        for label, scripts in (("without", bare), ("with", real)):
            b.reset()
            b.say(f"control: {n} jobs enqueued, claimed and completed, history counters {label} ({i + 1})")
            s0 = b.stats()
            b.on_loop(_with_broker(b, lambda broker, s=scripts: _run_jobs(broker, s, n)))
            delta = b.command_delta(s0, b.stats())
            runs[label].append({"script_usec_per_job": delta["script_usec"] / n,
                                "commands_per_job": sum(delta["calls"].get(c, 0) for c in ("hincrby", "expire")) / n})
    assert b.r is not None
    hist_keys = list(b.r.scan_iter(match=keys.index_key(CONTROL_TYPE, "hist:*"), count=1000))
    mem = sum(int(b.r.memory_usage(k) or 0) for k in hist_keys)
    fields = sum(int(b.r.hlen(k)) for k in hist_keys)
    med = {label: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]} for label, rs in runs.items()}
    return {"jobs": n, "with": med["with"], "without": med["without"],
            "script_usec_per_job_added": round(med["with"]["script_usec_per_job"]
                                               - med["without"]["script_usec_per_job"], 3),
            "history_hashes": len(hist_keys), "history_fields": fields, "history_bytes": mem}


async def _with_broker(b: Bench, work: Any) -> Any:
    broker = Broker(connect(b.url))
    try:
        return await work(broker)
    finally:
        await broker.close()


def measure_bulk_replay(b: Bench, n: int) -> dict[str, Any]:
    from supervisor.engine.control import BulkFilter, bulk  # noqa: PLC0415

    assert b.r is not None
    b.reset()
    b.say(f"control: seeding {n} dead jobs, then one bulk replay of them")
    seeded = _seed(b, "dead", n)
    b.r.config_set("slowlog-log-slower-than", 1000)
    b.r.slowlog_reset()
    started = time.perf_counter()
    report = b.on_loop(_with_broker(b, lambda broker: bulk(broker, "replay", BulkFilter(type=CONTROL_TYPE))))
    elapsed = time.perf_counter() - started
    slow = b.r.slowlog_get(128)
    b.r.config_set("slowlog-log-slower-than", 10_000)
    longest = max((int(e["duration"]) for e in slow), default=0)
    return {"jobs": n, "seed_s": round(seeded, 2), "replayed": report.done, "elapsed_s": round(elapsed, 2),
            "jobs_per_s": round(report.done / elapsed), "script_calls": report.batches,
            "longest_call_ms_client": report.longest_call_ms,
            "longest_command_ms_slowlog": round(longest / 1000, 2) if slow else "< 1 (none logged)"}


async def _time_requests(url: str, requests: list[tuple[str, str, dict[str, Any]]], rounds: int) -> dict[str, Any]:
    import httpx  # noqa: PLC0415

    from supervisor.operators.api.app import create_app  # noqa: PLC0415

    app = create_app(url, "bench-token")
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api", timeout=120,
                                 headers={"Authorization": "Bearer bench-token"}) as api:
        for label, path, params in requests:
            times, status, jobs = [], 0, 0
            for _ in range(rounds):
                t0 = time.perf_counter()
                r = await api.get(path, params=params)
                times.append((time.perf_counter() - t0) * 1000)
                status = r.status_code
                jobs = len(r.json().get("jobs", [])) if path == "/jobs" else 0
            out[label] = {"ms_median": round(statistics.median(times), 1), "ms_max": round(max(times), 1),
                          "status": status, **({"jobs": jobs} if path == "/jobs" else {})}
    await app.state.api.aclose()
    return out


def measure_listing(b: Bench, n: int) -> dict[str, Any]:
    from supervisor.operators.listing import Position, encode_cursor  # noqa: PLC0415

    b.reset()
    b.say(f"control: seeding {n} completed records, then timing the API's reads")
    seeded = _seed(b, "completed", n)
    assert b.r is not None
    middle = b.r.zrevrange(keys.index_key(CONTROL_TYPE, "st:completed"), n // 2, n // 2, withscores=True)
    deep = encode_cursor(Position(4, float(middle[0][1]), str(middle[0][0])))
    hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("types", "/types", {}), ("history_60m", "/history", {"minutes": 60}),
        ("jobs_first_page", "/jobs", {"type": CONTROL_TYPE, "limit": 50}),
        ("jobs_every_type", "/jobs", {"limit": 50}),
        ("jobs_deep_cursor", "/jobs", {"type": CONTROL_TYPE, "limit": 50, "cursor": deep}),
        ("jobs_completed_last_hour", "/jobs", {"type": CONTROL_TYPE, "state": "completed", "since": hour_ago,
                                               "limit": 50}),
        ("jobs_key_matching_nothing", "/jobs", {"type": CONTROL_TYPE, "key": "no-such-key", "limit": 50}),
    ]
    timed = b.on_loop(_time_requests(b.url, requests, rounds=5))
    return {"records": n, "seed_s": round(seeded, 1), "server_ms": timed}


def measure_control(b: Bench) -> dict[str, Any]:
    """The three figures above (smaller sizes with --quick)."""
    quick = b.o.quick
    return {
        "history": measure_history_cost(b, 2_000 if quick else 10_000),
        "bulk_replay": measure_bulk_replay(b, 10_000 if quick else 100_000),
        "listing": measure_listing(b, 50_000 if quick else 1_000_000),
    }

