"""The bench's harness: one Redis (private or given), a client, daemons started and stopped, and one drain timed.

`Bench` owns what every measurement (`supervisor_bench.sections`) stands on: the Redis it
measures and its bookkeeping (INFO deltas, a reset that keeps only the bench types'
metadata), the enqueue loops whose rates are reported, and `drain_once`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis as syncredis

import supervisor
from runners.stop import Escalation, ProcessTarget, stop_sync
from supervisor.engine import keys
from supervisor_bench.daemon import Daemon, ResourceSampler
from supervisor_bench.figures import cpu_delta, cpu_snapshot, payload_of
from supervisor_bench.handlers import write_handlers
from supervisor_bench.options import (
    BENCH_TYPES,
    CANCEL_TYPES,
    INPROCESS,
    PROCESS,
    SHELL,
    SUBPROCESS_PY,
    BenchError,
    BenchOptions,
)


def sync_redis(url: str) -> Any:
    """A blocking redis-py client for any Redis URL the product takes (one server, the master of a
    Sentinel group, a Redis Cluster: `supervisor.engine.redis_url`)."""
    from supervisor.engine.redis_url import parse_redis_url  # noqa: PLC0415

    target = parse_redis_url(url)
    if target.kind == "cluster":
        from redis.cluster import ClusterNode, RedisCluster  # noqa: PLC0415

        nodes = [ClusterNode(h, p) for h, p in target.hosts]  # type: ignore[no-untyped-call]  # redis-py: untyped
        return RedisCluster(startup_nodes=nodes, username=target.username,
                            password=target.password, ssl=target.tls, decode_responses=True)
    if target.kind == "sentinel":
        from redis.sentinel import Sentinel  # noqa: PLC0415

        sentinel = Sentinel(list(target.hosts), sentinel_kwargs={"username": target.sentinel_username,
                                                                 "password": target.sentinel_password,
                                                                 "ssl": target.tls},
                            username=target.username, password=target.password, db=target.db, ssl=target.tls)
        return sentinel.master_for(target.service, decode_responses=True)
    return syncredis.Redis.from_url(url, decode_responses=True)


def _summed(r: Any, section: str) -> dict[str, Any]:
    """INFO `section`, of every master of a Redis Cluster added up (counters, CPU, memory, the
    per-command stats), or of the one server."""
    if not hasattr(r, "get_primaries"):
        return dict(r.info(section))
    total: dict[str, Any] = {}
    for info in r.info(section, target_nodes=r.PRIMARIES).values():
        for key, value in info.items():
            if isinstance(value, dict):
                into = total.setdefault(key, {})
                for k, v in value.items():
                    if isinstance(v, int | float):
                        into[k] = into.get(k, 0) + v
            elif isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def _compile_packages() -> None:
    """Compile the daemon's packages to bytecode first, as `pip install` does for a wheel: from an
    editable checkout with PYTHONDONTWRITEBYTECODE set, every daemon start would otherwise compile
    every module again (BENCHMARKS.md). A read-only tree is left as it is."""
    import compileall  # noqa: PLC0415

    import runners  # noqa: PLC0415

    for package in (supervisor, runners):
        compileall.compile_dir(Path(package.__file__).parent, quiet=2)  # type: ignore[arg-type]


class Bench:
    """What every measurement runs against: one Redis, a `Client` on the bench's own event loop,
    the handler folders and the daemons started so far (`close` stops them all)."""

    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        self.root = Path(tempfile.mkdtemp(prefix="jsb-"))
        self.server: Any = None
        self.url = options.redis_url or ""
        self.owns_redis = options.redis_url is None
        self.r: Any = None  # redis-py: one server, a Sentinel master or a Cluster (sync_redis)
        self.loop = asyncio.new_event_loop()
        self.client: Any = None
        self._daemons = 0
        self._live: list[Daemon] = []
        self.payload = payload_of(options.payload_bytes)

    # --- set-up ----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A line of progress (stderr, from the CLI)."""
        if self.o.progress is not None:
            self.o.progress(text)

    def on_loop(self, coro: Any) -> Any:
        """Run `coro` to its end on the bench's event loop (the one its `Client` lives on)."""
        return self.loop.run_until_complete(coro)

    def setup(self) -> None:
        _compile_packages()
        if self.owns_redis:
            from supervisor.daemon.redis_server import RedisServer  # noqa: PLC0415

            sock = self.root / "redis.sock" if self.o.unix_socket else None
            self.server = RedisServer(self.root / "redis", unix_socket=sock, appendonly=True,
                                      appendfsync="everysec", binary=self.o.redis_server)
            self.server.start()
            self.url = self.server.url
        self.r = sync_redis(self.url)
        self.r.ping()
        if not self.owns_redis:
            self._check_shared_redis()
        from supervisor.producers.client import Client  # noqa: PLC0415

        self.client = self.on_loop(self._make_client(Client))
        write_handlers(self.root, self.o, self.url)

    async def _make_client(self, cls: Any) -> Any:
        # allow_unknown: the backlog is queued while no daemon serves the bench types
        return cls(self.url, allow_unknown=True)

    def _check_shared_redis(self) -> None:
        """Against a Redis that others use: refuse if a real type shares a bench type's hash tag."""
        assert self.r is not None
        ours = {keys.tag_for(n): n for n in BENCH_TYPES + CANCEL_TYPES}
        for name in self.r.smembers(keys.TYPES_KEY):
            if name not in ours.values() and keys.tag_for(name) in ours:
                raise BenchError(
                    f"job type {name!r} shares the hash tag of {ours[keys.tag_for(name)]!r}: the bench would "
                    "delete its jobs when cleaning up. Run the bench against another Redis database")
        policy = self.r.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            raise BenchError(f"Redis maxmemory-policy is {policy!r}; the daemon refuses such a Redis")

    def close(self) -> None:
        for d in self._live:  # a daemon left by an error, Ctrl-C or SIGTERM
            d.kill()
            d.sock.close()
        for proc in self._unlisted_daemons():
            stop_sync(ProcessTarget(proc, kill_tree=True), Escalation(term_s=None, reap_s=10))
        try:
            with contextlib.suppress(Exception):  # best effort on the way out
                if self.r is not None and not self.owns_redis:
                    self.reset(keep_meta=False)
            with contextlib.suppress(Exception):  # a loop interrupted by a signal may refuse to run again
                if self.client is not None:
                    self.on_loop(self.client.close())
                self.loop.close()
            if self.r is not None:
                self.r.close()
        finally:
            if self.server is not None:
                self.server.stop()
            if not self.o.keep_dir:
                shutil.rmtree(self.root, ignore_errors=True)

    def _unlisted_daemons(self) -> list[psutil.Process]:
        """Daemons of ours that `_live` does not know: a signal that arrived between a daemon's
        spawn and its registration. Ours: a child of this process running in the bench's folder."""
        known = {d.proc.pid for d in self._live}
        found = []
        for proc in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if proc.pid not in known and proc.cwd() == str(self.root) and "supervisor" in proc.cmdline():
                    found.append(proc)
        return found

    # --- Redis bookkeeping -----------------------------------------------------------------

    def reset(self, keep_meta: bool = True) -> None:
        """Remove every key of the bench types (and only those), keeping their published metadata."""
        assert self.r is not None
        if self.owns_redis:
            metas: dict[str, Any] = {n: self.r.hgetall(keys.meta_key(n)) for n in BENCH_TYPES + CANCEL_TYPES}
            self.r.flushall()
            if keep_meta:
                for name, meta in metas.items():
                    if meta:
                        self.r.hset(keys.meta_key(name), mapping=meta)
                        self.r.sadd(keys.TYPES_KEY, name)
            return
        for name in BENCH_TYPES + CANCEL_TYPES:
            tag = keys.tag_for(name)
            batch: list[str] = []
            for key in self.r.scan_iter(match=f"{keys.PREFIX}:{{{tag}}}:*", count=10_000):
                if keep_meta and key == keys.meta_key(name):
                    continue
                batch.append(key)
                if len(batch) >= 5000:
                    self.r.unlink(*batch)
                    batch = []
            if batch:
                self.r.unlink(*batch)
            if not keep_meta:
                self.r.srem(keys.TYPES_KEY, name)

    def stats(self) -> dict[str, Any]:
        """Commands processed (total and per command) and memory, from one INFO call."""
        assert self.r is not None
        info = _summed(self.r, "all")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
                 if k.startswith("cmdstat_") and isinstance(v, dict)}
        usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in info.items()
                if k.startswith("cmdstat_") and isinstance(v, dict)}
        return {"total": int(info["total_commands_processed"]), "calls": calls, "usec": usec,
                "used_memory": int(info["used_memory"]),
                "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
                "net_in": int(info["total_net_input_bytes"]), "net_out": int(info["total_net_output_bytes"]),
                "dataset": int(info.get("used_memory_dataset", info["used_memory"]))}

    @staticmethod
    def command_delta(before: dict[str, Any], after: dict[str, Any], own: int = 0) -> dict[str, Any]:
        """Commands between two `stats()` (less the INFO that took `before`, and `own` bookkeeping)."""
        calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"]}
        calls.pop("info", None)
        calls = {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}
        script_usec = sum(after["usec"].get(k, 0) - before["usec"].get(k, 0) for k in ("evalsha", "eval"))
        return {"total": after["total"] - before["total"] - 1 - own, "calls": calls,
                "scripts": calls.get("evalsha", 0) + calls.get("eval", 0), "script_usec": script_usec}

    def redis_version(self) -> dict[str, Any]:
        assert self.r is not None
        info = self.r.info("server")
        mem = self.r.info("memory")
        return {"version": info.get("redis_version"), "malloc": mem.get("mem_allocator"),
                "url_kind": self.url.split("://")[0], "embedded": self.owns_redis,
                "appendonly": self.r.config_get("appendonly").get("appendonly"),
                "appendfsync": self.r.config_get("appendfsync").get("appendfsync")}

    def completed(self, name: str) -> int:
        assert self.r is not None
        return int(self.r.zcard(keys.index_key(name, "st:completed")))

    def not_completed_finished(self, name: str) -> dict[str, int]:
        assert self.r is not None
        out = {}
        for st in ("failed", "dead", "cancelled", "expired"):
            n = int(self.r.zcard(keys.index_key(name, f"st:{st}")))
            if n:
                out[st] = n
        return out

    # --- enqueue ---------------------------------------------------------------------------

    def enqueue_bulk(self, name: str, n: int, chunk: int = 1000) -> float:
        """Queue `n` no-op jobs with `enqueue_many` in chunks; returns the seconds it took."""
        from supervisor.producers.client import EnqueueRequest  # noqa: PLC0415

        async def go() -> float:
            payload = self.payload
            started = time.perf_counter()
            left = n
            while left > 0:
                k = min(chunk, left)
                await self.client.enqueue_many([EnqueueRequest(name, payload) for _ in range(k)])
                left -= k
            return time.perf_counter() - started

        return float(self.on_loop(go()))

    def enqueue_one_by_one(self, name: str, n: int) -> float:
        async def go() -> float:
            payload = self.payload
            enqueue = self.client.enqueue
            started = time.perf_counter()
            for _ in range(n):
                await enqueue(name, payload)
            return time.perf_counter() - started

        return float(self.on_loop(go()))

    def enqueue_one_by_one_sync(self, name: str, n: int) -> float:
        """`SyncClient.enqueue` in a loop (what a web view or script does)."""
        from supervisor.producers.client import SyncClient  # noqa: PLC0415

        with SyncClient(self.url, allow_unknown=True) as client:  # no daemon serves the type meanwhile
            payload = self.payload
            client.enqueue(name, payload)  # connect and fetch the type's schema outside the timing
            started = time.perf_counter()
            for _ in range(n):
                client.enqueue(name, payload)
            return time.perf_counter() - started

    # --- daemons ---------------------------------------------------------------------------

    def daemon_env(self, jobs_dir: Path, tasks_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update({
            "REDIS_URL": self.url,
            "JOB_SUPERVISOR_JOBS_DIR": str(jobs_dir),
            "JOB_SUPERVISOR_TASKS_DIR": str(tasks_dir),
            "JOB_SUPERVISOR_STATE_DIR": str(self.root / "state"),
            "JOB_SUPERVISOR_LOG_LEVEL": os.environ.get("BENCH_DAEMON_LOG_LEVEL", "warning"),
            "JOB_SUPERVISOR_LOG_FORMAT": "json",
            "JOB_SUPERVISOR_INSTANCE_NAME": "bench",
            "JOB_SUPERVISOR_MAX_FINISHED_PER_TYPE": str(max(10 * self.o.backlog_jobs, 10 * self.o.jobs, 100_000)),
            "WORKERS_CONCURRENCY": str(self.o.workers),
            "PYTHONUNBUFFERED": "1",
            **(extra or {}),
        })
        return env

    def start_daemon(self, label: str, jobs_dir: Path, tasks_dir: Path, env: dict[str, str] | None = None) -> Daemon:
        """A daemon on `jobs_dir` and `tasks_dir`, with `daemon_env`'s environment unless given `env`."""
        self._daemons += 1
        d = Daemon(self.root, f"{label}-{self._daemons}", env or self.daemon_env(jobs_dir, tasks_dir))
        self._live = [x for x in self._live if x.proc.poll() is None] + [d]
        return d

    def dirs_for(self, name: str) -> tuple[Path, Path]:
        if name == SHELL:
            return self.root / "jobs-none-py", self.root / "tasks-shell"
        label = {INPROCESS: "inprocess", PROCESS: "process", SUBPROCESS_PY: "subprocess"}[name]
        return self.root / f"jobs-{label}", self.root / "tasks-none"

    def publish_types(self) -> None:
        """Start a daemon serving every bench type once, so producers find their metadata."""
        tasks = self.root / ("tasks-shell" if self.o.serves(SHELL) else "tasks-none")
        d = self.start_daemon("publish", self.root / "jobs-all", tasks)
        try:
            d.wait_ready()
        finally:
            d.stop()

    def settle(self) -> float:
        """Wait until Redis has finished the persistence work the fill started; returns the seconds.

        Queueing a million jobs makes Redis rewrite its AOF several times, and the last rewrite
        (with the kernel's write-back of hundreds of MB) can still be running when the drain
        starts: the drain would then measure the fill's aftermath, not the queue's depth. So a
        drain starts once no AOF rewrite or RDB save is running or scheduled, and, for the
        private Redis (same machine), after `sync`. Write-back during a drain is still measured.
        """
        assert self.r is not None
        started = time.monotonic()
        deadline = started + 300.0
        while time.monotonic() < deadline:
            p = self.r.info("persistence")
            busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
            if not any(int(p.get(k) or 0) for k in busy):
                break
            time.sleep(0.05)
        if self.owns_redis:
            os.sync()
        return time.monotonic() - started

    def drain_once(self, name: str, n: int, sample: int | None = None,
                   enqueue_chunk: int = 1000) -> dict[str, Any]:
        """Queue `n` jobs, start `daemons` daemons, time READY -> `sample` (default n) completed, stop them."""
        target = sample or n
        self.reset()
        before = self.stats()
        t_enq = self.enqueue_bulk(name, n, enqueue_chunk)
        time.sleep(0.2)
        settle_s = self.settle()
        mid = self.stats()
        jobs_dir, tasks_dir = self.dirs_for(name)
        started_wall = time.time()
        ds = [self.start_daemon(name.removeprefix("bench."), jobs_dir, tasks_dir) for _ in range(self.o.daemons)]
        try:
            w = self._watch_drain(ds, name, target)
            elapsed = w["elapsed"]
            out = {
                "jobs": target, "queued": n, "seconds": elapsed, "rate": target / elapsed,
                "enqueue_rate": n / t_enq, "start_to_ready_s": round(w["ready"] - ds[0].spawned, 3),
                "settle_s": round(settle_s, 3), "daemons": len(ds),
                "rss": w["rss"],
                "cpu_percent": {"daemon_and_workers": round(w["daemon_cpu"] / elapsed * 100, 1),
                                "redis": round(w["redis_cpu"] / elapsed * 100, 1) if w["redis_cpu"] is not None
                                else None},
                "other_outcomes": self.not_completed_finished(name),
                **self._life_times(name, started_wall, target),
            }
        finally:
            codes = [d.stop() for d in ds]
        out["exit_code"] = next((c for c in codes if c), codes[0])
        out.update(self._redis_cost(before, mid, w["after"], n, target, w["polls"]))
        if self.o.handler == "redis-roundtrip" and name in (INPROCESS, PROCESS):
            out["roundtrips"] = self._roundtrips(name)
        return out

    def _life_times(self, name: str, started_wall: float, target: int) -> dict[str, Any]:
        """From the daemons' spawn (wall clock) to the first and the last completion, from the
        finished index (its scores are Redis's clock in ms: the same machine's clock), and the
        steady rate between them (first to last job)."""
        assert self.r is not None
        idx = keys.index_key(name, "st:completed")
        first = self.r.zrange(idx, 0, 0, withscores=True)
        last = self.r.zrange(idx, -1, -1, withscores=True)
        if not first or not last:
            return {}
        t_first, t_last = float(first[0][1]) / 1000, float(last[0][1]) / 1000
        steady = (target - 1) / (t_last - t_first) if t_last > t_first else None
        return {"start_to_first_s": round(t_first - started_wall, 3),
                "start_to_last_s": round(t_last - started_wall, 3),
                "rate_from_start": target / (t_last - started_wall), "steady_rate": steady}

    def _redis_cost(self, before: dict[str, Any], mid: dict[str, Any], after: dict[str, Any], n: int,
                    target: int, polls: int) -> dict[str, Any]:
        """What Redis spent on the fill (before -> mid) and on the drain (mid -> after): commands
        (the bench's own polls left out), script time, CPU (INFO cpu), network bytes, memory."""
        enq = self.command_delta(before, mid)
        drain = self.command_delta(mid, after, own=polls)
        per_job = target == n

        def us(a: dict[str, Any], b: dict[str, Any], k: int) -> float:
            return float(b["cpu"] - a["cpu"]) * 1e6 / k

        def net(a: dict[str, Any], b: dict[str, Any], k: int) -> float:
            return float(b["net_in"] - a["net_in"] + b["net_out"] - a["net_out"]) / k

        return {
            "commands": {
                "enqueue_per_job": enq["total"] / n, "drain_per_job": drain["total"] / target,
                "per_job": (enq["total"] + drain["total"]) / n if per_job else None,
                "enqueue_scripts_per_job": enq["scripts"] / n, "drain_scripts_per_job": drain["scripts"] / target,
                "drain_script_us_per_job": drain["script_usec"] / target,
                "enqueue_script_us_per_job": enq["script_usec"] / n,
                "drain_by_command": drain["calls"],
            },
            # INFO cpu (used_cpu_sys + used_cpu_user): all of Redis's work, network and AOF included
            "redis_cpu_us_per_job": {"enqueue": us(before, mid, n), "drain": us(mid, after, target),
                                     "life": us(before, mid, n) + us(mid, after, target) if per_job else None},
            "redis_net_bytes_per_job": {"enqueue": net(before, mid, n), "drain": net(mid, after, target)},
            "memory_per_job_bytes": (mid["used_memory"] - before["used_memory"]) / n,
            "dataset_per_job_bytes": (mid["dataset"] - before["dataset"]) / n,
        }

    def _roundtrips(self, name: str) -> int:
        """How many round trips the handlers of `name` made (their counter), to check none was skipped."""
        from supervisor_bench.handlers import roundtrip_key  # noqa: PLC0415

        assert self.r is not None
        return int(self.r.get(roundtrip_key(name)) or 0)

    def _watch_drain(self, ds: list[Daemon], name: str, target: int) -> dict[str, Any]:
        """From the daemons' READY (all of them) until `target` jobs of `name` completed: the seconds,
        CPU of the daemons (and workers) and of the private Redis, peak RSS (the first daemon's
        tree), Redis stats after, polls sent."""
        ready = max(d.wait_ready() for d in ds)

        def trees() -> list[psutil.Process]:
            return [p for d in ds for p in d.tree()]

        cpu0 = cpu_snapshot(trees())
        redis_ps = psutil.Process(self.server.process.pid) if self.server and self.server.process else None
        rcpu0 = cpu_snapshot([redis_ps]) if redis_ps else {}
        limit = time.monotonic() + max(120.0, target / (1 if name in (SUBPROCESS_PY, SHELL) else 200))
        with ResourceSampler(ds[0]) as rss:
            polls, finished = self._poll_completed(ds, name, target, limit)
            cpu1 = cpu_snapshot(trees())
            rcpu1 = cpu_snapshot([redis_ps]) if redis_ps else {}
        return {"ready": ready, "elapsed": finished - ready, "after": self.stats(), "rss": rss.result(),
                "daemon_cpu": cpu_delta(cpu0, cpu1), "redis_cpu": cpu_delta(rcpu0, rcpu1) if redis_ps else None,
                "polls": polls}

    def _poll_completed(self, ds: list[Daemon], name: str, target: int, limit: float) -> tuple[int, float]:
        """Poll the type's completed count until it reaches `target`; (polls, perf_counter time then)."""
        polls = 0
        while True:
            done = self.completed(name)
            polls += 1
            if done >= target:
                return polls, time.perf_counter()
            for d in ds:
                if d.proc.poll() is not None:
                    raise BenchError(f"daemon exited with {d.proc.returncode} mid-drain:\n{d.log_tail()}")
            if time.monotonic() > limit:
                raise BenchError(f"drain of {name} stalled at {done}/{target} "
                                 f"(other outcomes: {self.not_completed_finished(name)}):\n{ds[0].log_tail()}")
            time.sleep(0.005 if target <= 5000 else 0.01)
