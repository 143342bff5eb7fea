"""huey 3.5.4 or dramatiq 2.2.1 with the round-trip handler of issue 17 (one Redis round trip per
job with the blocking `redis` client, an INCR of a counter), measured the way `job-supervisor
bench --handler redis-roundtrip` measures ours. Run with the peers' venv (scripts/peers/roundtrip.sh):

    python peer_roundtrip.py huey|dramatiq drain   redis://127.0.0.1:6379/1 [N] [RUNS]
    python peer_roundtrip.py huey              latency redis://127.0.0.1:6379/1 [N] [GAP_MS]

drain: N jobs queued one at a time (neither has a bulk enqueue), then the worker starts (huey:
2 worker processes; dramatiq: 2 processes x 8 threads: each one's best configuration in issue
17) and is timed from its spawn to the first and the last handler (the handlers of job 1 and
job N stamp the time), for RUNS runs. Redis CPU per job is INFO cpu (used_cpu_sys +
used_cpu_user) over the enqueue and the drain; commands per job INFO total_commands_processed
over both, less this script's own polls and bookkeeping.

latency: a huey worker, idle; N jobs enqueued GAP_MS apart, each carrying the client's clock;
the handler's first line reads the clock and its round trip pushes the difference.
Prints one JSON object.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

COUNTER = "peer:roundtrip"
LATENCIES = "peer:latency"

HANDLER = f'''
import time
import redis
_r = None


def _redis():
    global _r
    if _r is None:
        _r = redis.Redis.from_url(URL)
    return _r


def roundtrip(x):
    started = time.time()
    if isinstance(x, dict) and "t" in x:  # latency: the round trip pushes the enqueue-to-start time
        _redis().rpush({LATENCIES!r}, repr(started - x["t"]))
        return None
    n = _redis().incr({COUNTER!r})
    if n == 1 or n == x["last"]:  # two stamps per run: not a round trip per job
        _redis().set("{COUNTER}:t%d" % n, repr(time.time()))
    return None
'''

MODULES = {
    "huey": "from huey import RedisHuey\nhuey = RedisHuey('peerbench', url=URL)\nrt = huey.task()(roundtrip)\n",
    "dramatiq": ("import dramatiq\nfrom dramatiq.brokers.redis import RedisBroker\n"
                 "dramatiq.set_broker(RedisBroker(url=URL))\nrt = dramatiq.actor(max_retries=0)(roundtrip)\n"),
}
WORKERS = {
    "huey": lambda py: [py, "-m", "huey.bin.huey_consumer", "peer_rt.huey", "-w", "2", "-k", "process"],
    "dramatiq": lambda py: [py, "-m", "dramatiq", "peer_rt", "--processes", "2", "--threads", "8"],
}


def cpu(r):
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def commands(r):
    return int(r.info("stats")["total_commands_processed"])


def send(peer, mod, payload):
    if peer == "huey":
        mod.rt(payload)
    else:
        mod.rt.send(payload)


def start_worker(peer, here):
    return subprocess.Popen(WORKERS[peer](sys.executable), cwd=here, stdout=subprocess.DEVNULL,  # noqa: S603
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(here)})


def stop_worker(proc):
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout, what):
    """Poll `predicate` every 5 ms until true; the number of polls (each one Redis command)."""
    deadline, polls = time.monotonic() + timeout, 0
    while not predicate():
        polls += 1
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)
    return polls + 1


def drain_once(peer, mod, r, here, n):
    r.flushdb()
    cpu0, cmd0 = cpu(r), commands(r)
    for _ in range(n):
        send(peer, mod, {"last": n, "n": "x" * 80})
    cpu1, cmd1 = cpu(r), commands(r)
    spawned = time.time()
    proc = start_worker(peer, here)
    try:
        polls = wait_for(lambda: int(r.get(COUNTER) or 0) >= n, 600, f"{n} round trips")
        if peer == "dramatiq":  # acked: its message hash empties
            polls += wait_for(lambda: r.hlen("dramatiq:default.msgs") == 0, 60, "the last acks")
        cpu2, cmd2 = cpu(r), commands(r)
        first, last = (float(r.get(f"{COUNTER}:t{k}")) for k in (1, n))
    finally:
        stop_worker(proc)
    own = 4 + polls  # the INFO calls between the counts, the two stamps' GETs, the polls
    return {"rate_from_start": n / (last - spawned), "steady_rate": (n - 1) / (last - first),
            "start_to_first_s": first - spawned, "start_to_last_s": last - spawned,
            "redis_cpu_us_per_job": (cpu2 - cpu0) * 1e6 / n,
            "redis_cpu_us_per_job_enqueue": (cpu1 - cpu0) * 1e6 / n,
            "commands_per_job": (cmd2 - cmd0 - own) / n, "enqueue_commands_per_job": (cmd1 - cmd0 - 2) / n}


def latency(peer, mod, r, here, n, gap_ms):
    r.flushdb()
    proc = start_worker(peer, here)
    try:
        send(peer, mod, {"t": time.time()})  # warm-up: the worker is up and idle before timing
        wait_for(lambda: r.llen(LATENCIES) >= 1, 60, "the warm-up job")
        time.sleep(0.5)
        r.delete(LATENCIES)
        for _ in range(n):
            send(peer, mod, {"t": time.time()})
            time.sleep(gap_ms / 1000)
        wait_for(lambda: r.llen(LATENCIES) >= n, 60, "the latency jobs")
        ms = sorted(float(x) * 1000 for x in r.lrange(LATENCIES, 0, -1))
    finally:
        stop_worker(proc)
    rank = lambda q: ms[min(max(int(-(-q * len(ms) // 100)), 1), len(ms)) - 1]  # noqa: E731  (nearest rank)
    return {"jobs": len(ms), "gap_ms": gap_ms, "p50_ms": rank(50), "p99_ms": rank(99), "max_ms": ms[-1]}


def main():
    peer, what, url = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else (20_000 if what == "drain" else 500)
    here = Path(tempfile.mkdtemp(prefix=f"peer-{peer}-"))  # the task module, outside the repository
    (here / "peer_rt.py").write_text(f"URL = {url!r}\n" + HANDLER + MODULES[peer])
    sys.path.insert(0, str(here))
    import peer_rt  # noqa: PLC0415  (written just above)

    r = redis.Redis.from_url(url)
    versions = {"huey": "huey 3.5.4", "dramatiq": "dramatiq 2.2.1"}
    try:
        if what == "latency":
            gap = float(sys.argv[5]) if len(sys.argv) > 5 else 10.0
            print(json.dumps({"peer": versions[peer], "latency": latency(peer, peer_rt, r, here, n, gap)}))
            return
        runs = [drain_once(peer, peer_rt, r, here, n) for _ in range(int(sys.argv[5]) if len(sys.argv) > 5 else 3)]
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        print(json.dumps({"peer": versions[peer], "jobs": n, "median": med, "runs": runs}))
    finally:
        r.flushdb()
        shutil.rmtree(here)


if __name__ == "__main__":
    main()
