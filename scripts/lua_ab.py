"""Redis CPU per job of a no-op job's life (bulk enqueue, claim, complete), for two copies of the
Lua scripts side by side: how BENCHMARKS.md's "parts removed" figures were measured (issue 17).

    .venv/bin/python scripts/lua_ab.py A_LUA_DIR B_LUA_DIR [--jobs 2000] [--rounds 12] [--claim 100] [--b-no-aof]

Each folder holds a full copy of `supervisor/engine/lua/` (edit one: remove a part, try a
change). Two private `redis-server`s with the bench's settings (AOF everysec) run the two copies;
the rounds alternate between them (A then B, then B then A), so the machine's drift hits both.
A round queues `--jobs` plain jobs with the enqueue script (chunks of 200, pipelined), then claims
`--claim` at a time and completes each batch at once; Redis's CPU (INFO used_cpu_sys +
used_cpu_user) is read around each phase. Prints the medians per job, commands per job and AOF
bytes per job (negative when a rewrite shrank the file meanwhile). `--b-no-aof` runs B's server
without the append-only file (give both the same folder): the AOF's share of Redis's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from supervisor.daemon.redis_server import RedisServer
from supervisor.engine import (
    keys,
    scripts as S,  # noqa: N812
)

NAME = "bench.inprocess"
P, JP = keys.queue_prefix(NAME), keys.job_prefix(NAME)
PAYLOAD = json.dumps({"data": "x" * 89})


def load(r: redis.Redis, lua: Path) -> dict[str, str]:
    """The three scripts of `lua`, assembled as the broker does, loaded into `r`."""
    S._LUA_DIR = lua  # noqa: SLF001
    S.lua_text.cache_clear()
    S.script_source.cache_clear()
    return {n: r.script_load(S.script_source(n)) for n in ("enqueue", "claim", "complete")}


def cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def context() -> str:
    b = os.urandom(32).hex()
    return f'{{"request_id":"{b[:16]}","trace_id":"{b[16:48]}","traceparent":"00-{b[16:48]}-{b[48:64]}-01"}}'


def one_round(r: redis.Redis, sha: dict[str, str], n: int, claim: int) -> tuple[float, float, int, int]:
    """Enqueue and drain `n` jobs; Redis CPU seconds of each phase, commands and AOF bytes."""
    info0 = r.info("all")
    c0 = cpu(r)
    pipe = r.pipeline(transaction=False)
    ids = [keys.new_job_id(NAME) for _ in range(n)]
    for i in range(0, n, 200):
        chunk = ids[i:i + 200]
        args: list[Any] = [P, JP, NAME, len(chunk), 3]
        for job_id in chunk:
            args += [job_id, PAYLOAD, context()]
        pipe.evalsha(sha["enqueue"], 0, *args)
    pipe.execute()
    c1 = cpu(r)
    done = 0
    while done < n:
        out = r.evalsha(sha["claim"], 0, P, JP, "instance-1", claim, 300_000, 1000, 0, 0)[2]
        items: list[Any] = []
        for k in range(0, len(out), 7):
            items += [out[k], str(out[k + 3]), "1733470000.123456", ""]
        r.evalsha(sha["complete"], 0, P, JP, len(items) // 4, *items)
        done += len(items) // 4
    c2 = cpu(r)
    info1 = r.info("all")
    commands = int(info1["total_commands_processed"]) - int(info0["total_commands_processed"])
    aof = int(info1.get("aof_current_size", 0)) - int(info0.get("aof_current_size", 0))
    return c1 - c0, c2 - c1, commands, aof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--claim", type=int, default=100)
    ap.add_argument("--b-no-aof", action="store_true")
    o = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lua-ab-"))
    servers = [RedisServer(root / "a"), RedisServer(root / "b", appendonly=not o.b_no_aof)]
    try:
        sides = []
        for server, lua in zip(servers, (o.a, o.b), strict=True):
            server.start()
            r = redis.Redis.from_url(server.url)
            r.hset(P + "meta", mapping={"retention_ms": "86400000"})
            sides.append((lua, r, load(r, lua)))
        texts = [{f.name: f.read_bytes() for f in folder.glob("*.lua")} for folder in (o.a, o.b)]
        differ = texts[0] != texts[1]
        if differ and sides[0][2] == sides[1][2]:  # the two folders' scripts must reach their servers
            raise SystemExit("lua_ab: A and B differ, but the same scripts were loaded for both")
        labels = ["A " + str(o.a), "B " + str(o.b) + (" (no AOF)" if o.b_no_aof else "")]
        acc: dict[str, list[tuple[float, float, int, int]]] = {label: [] for label in labels}
        for i in range(o.rounds):
            for label, (_, r, sha) in list(zip(labels, sides, strict=True))[:: 1 if i % 2 == 0 else -1]:
                acc[label].append(one_round(r, sha, o.jobs, o.claim))
        for lua, runs in acc.items():
            enq = statistics.median(x[0] for x in runs) * 1e6 / o.jobs
            drain = statistics.median(x[1] for x in runs) * 1e6 / o.jobs
            cmds = statistics.fmean(x[2] for x in runs) / o.jobs
            aof = statistics.fmean(x[3] for x in runs) / o.jobs
            print(f"{lua}: Redis CPU per job: enqueue {enq:.1f} + drain {drain:.1f} = {enq + drain:.1f} us | "
                  f"commands per job {cmds:.2f} | AOF bytes per job {aof:.0f}")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
