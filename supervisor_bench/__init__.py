"""The benchmark harness behind `job-supervisor bench`: the same figures, measured the same way every time.

What it measures, each a median of `repeat` runs (see BENCHMARKS.md for the method):

- enqueue rate, one at a time (`Client.enqueue` in a loop) and bulk (`Client.enqueue_many`
  in chunks of 1000), with no daemon running;
- drain rate of N already-queued no-op jobs per runtime: N jobs are queued with
  `enqueue_many` while no daemon runs, then a real daemon subprocess (`python -m supervisor
  run`) is started and timed from its READY=1 until the type's `completed` count reaches N
  (it starts once Redis has finished the AOF rewrites the fill set off: `Bench.settle`);
- enqueue-to-start latency (p50/p99) against an idle daemon: jobs enqueued one by one with a
  pause between them; the handler returns `time.time()` as its first act, compared with a
  client timestamp taken just before `enqueue` (the records' `created`/`started` are kept in ms,
  too coarse for a 1 ms target; their difference is reported too);
- peak RSS of the daemon and of its descendants (pool workers), sampled with psutil;
- Redis cost: commands per job (INFO `total_commands_processed`, which counts the commands a
  script runs too), script calls per job (EVALSHA: one per batch when batching works) and Redis
  memory per queued job (INFO `used_memory` delta after queueing N jobs);
- idle cost: CPU of an idle daemon (and its workers) and the Redis commands it sends per second;
- `backlog`: the drain rate of the first jobs of a deep queue (1,000,000 by default) against a
  shallow one (10,000);
- `cancel`: cancel-to-handler latency (p50/p99) of running in-process and process handlers under
  `ack_wait=300` (so a lease renewal, every 100 s, cannot be what tells them): each handler waits
  on `ctx.cancel_event` and writes the time it saw it, compared with a client timestamp taken just
  before `Client.cancel`;
- `cli`: the CPU (user + sys) one `job-supervisor` command takes from start to exit, for `health`,
  `jobs get` and `enqueue` (mostly imports: a command loads only what it uses).

SIGTERM or SIGINT stops the bench cleanly: its daemons and private Redis are stopped first.

The bench writes its own no-op handlers into a temporary folder; it only ever touches keys of
its own `bench.*` job types, so it is safe against a shared Redis (but the INFO-based figures
then include the other clients' traffic). Without `--redis-url` (and no REDIS_URL in the
settings) it starts a private `redis-server` with `appendonly yes`, `appendfsync everysec`,
like the daemon's embedded mode.

Outside the product packages (`supervisor`, `runners`): it uses their public API and runs
daemons as subprocesses. `supervisor/operators/cli/bench.py` (the command's options) imports it only
when `bench` runs. The modules: `options` (what it can be told, its job types), `harness`
(the Redis, client and daemons every measurement stands on, one drain timed), `daemon` (a
daemon under test), `sections` (one function per measurement), `run` (one whole run),
`figures`, `targets`, `handlers` (what the daemons serve) and `render` (the tables).
"""

from __future__ import annotations

from supervisor_bench.options import BenchError, BenchOptions, BenchStopped
from supervisor_bench.render import render
from supervisor_bench.run import run_bench
from supervisor_bench.targets import PEERS, TARGETS, check_targets

__all__ = ["PEERS", "TARGETS", "BenchError", "BenchOptions", "BenchStopped", "check_targets", "render", "run_bench"]
