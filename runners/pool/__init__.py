"""The `process` runtime: a pool of long-lived worker processes that import the handlers once.

The package holds the runner (`runner`: which worker runs which job, the
`Runner` API), the worker processes (`workers`: start, replace, recycle, stop;
`worker`: one worker's states and their legal transitions), the daemon's end
of each pipe (`pipe`), the messages between daemon and workers (`protocol`)
and the code a worker runs (`child`). The dispatcher sees an ordinary
`Runner`; the dispatcher caps each type's runs (its `concurrency`), and the
pool spreads them over its workers, each of which runs many at once.

Design, and why:

- Every core, without the daemon setting the pace (issue 17): a worker runs many
  jobs at once, and messages travel in batches, so the daemon's work per job is a
  few list operations and a share of one write. Async handlers run on the
  worker's own event loop (a thread of its own), each job a task: as many at once
  as the daemon sends. Sync handlers run in lanes (threads, `threads` per worker,
  default 4): the pool measures each sync type's share of time on the CPU (from the
  worker thread's CPU time and run-queue wait, over wall time) and gives a type
  1 / that share lanes (rounded down), so handlers that wait overlap their waits while
  CPU-bound ones (and types not measured yet) run one at a time per worker, on its
  main thread, as before. The daemon places a job where it starts at once (an
  async type, a free lane), else queues it behind short sync runs only, else keeps
  it in the pool, oldest first; a run of an async type goes past the sync runs kept
  there (it needs no lane), never a sync run past another. Chosen over workers that
  claim and settle in Redis themselves: that would remove the hop, but it needs
  Redis credentials and a second copy of the claim, lease, fencing and settle
  path in every worker, against the rule
  that runners never touch Redis; with batches the hop costs the daemon less than
  the claim and settle it does anyway. The price of sharing a process: a worker
  killed for one job (its timeout, an ignored cancel, a crash) takes the jobs
  running beside it with it; they fail that attempt and are delivered again.

- Start method: `forkserver` (where the platform has it, else `spawn`), never a
  plain fork of the threaded daemon. The fork server preloads this package (and so
  pydantic, structlog, the `supervisor` package), so replacing a crashed worker
  takes a few milliseconds instead of a fresh interpreter's ~0.4 s; it also imports
  the installed libraries the handler files name (`runners.fork_server`). Handler files
  are *not* preloaded: every worker loads them itself, from the sources the
  daemon accepted (`accept(manifest)`, see `supervisor.daemon.accepted`), never from
  the folder as it is now: after a broken edit, workers keep serving the last
  good version, and a new accepted version recycles them between jobs.
  As with any non-fork start method, a `__main__` script must guard its entry point with
  `if __name__ == "__main__":` (`python -m supervisor` and the console script do).
  The fork server keeps the stdout and environment the daemon had when the first
  pool started; workers log JSON lines to that stdout.
- Queue-ahead: a no-op job is far shorter than a round trip between two
  processes, so a worker that waited for its next job after each result would
  sit idle most of the time. Each worker therefore holds up to `queue_depth`
  sync jobs queued behind those it runs; the daemon sends new jobs to the
  least-loaded worker. Jobs are only queued behind jobs of types that usually
  run short (the pool keeps an average run time per type): long ones gain
  nothing from it and would hold the jobs behind them. A queued job has not
  started. A worker reports `started` (in the same write as the previous job's
  result) *before* it calls the handler, so the daemon always knows which job
  a worker runs; the timeout counts from that report. A cancelled queued job
  is dropped by its worker and never starts. A worker that is stopped or
  recycled hands its queued jobs back, and those of a worker that dies are
  taken back: either way they run on another worker, and only the job it was
  running can fail with it. Nothing is queued behind a job that has run for
  `reclaim_after_s`, and what is queued behind it is taken back, so one long
  run does not hold short ones while another worker is free.
- IPC: one socket pair per worker (`multiprocessing.Pipe`), carrying JSON text
  only (no pickled user objects cross it, in either direction): one message per
  line, several lines per write when they are ready together. The daemon's end
  is non-blocking: it reads with `loop.add_reader` (every readable message in
  one callback) and writes every message it made in one loop iteration in one
  write, buffering with `loop.add_writer` rather than blocking its loop. A
  worker's death is seen as EOF on the pipe and on the process sentinel; what
  it wrote before dying is still read.
- Inside a worker (`child`): a listener thread owns the receiving end: it hands
  async `run`s to the loop thread at once, queues sync ones for the lanes, and
  acts on `cancel`, `reclaim`, `stop` and child-enqueue replies at once, so a
  busy handler can still be cancelled and queued jobs handed back.
"""

from runners.fork_server import default_start_method
from runners.pool.child import worker_main
from runners.pool.runner import ProcessPoolRunner
from runners.pool.workers import describe_exit

__all__ = ["ProcessPoolRunner", "default_start_method", "describe_exit", "worker_main"]
