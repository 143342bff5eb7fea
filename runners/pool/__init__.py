"""The `process` runtime: a pool of long-lived worker processes that import the handlers once.

The package holds the runner (`runner`: which worker runs which job, the
`Runner` API), the worker processes (`workers`: start, replace, recycle, stop;
`worker`: one worker's states and their legal transitions), the daemon's end
of each pipe (`pipe`), the messages between daemon and workers (`protocol`)
and the code a worker runs (`child`). The dispatcher sees an ordinary
`Runner`; the pool caps the number of runs *running* at once at its size (one
per worker; the dispatcher caps each type), and may hold a few more queued
ahead in each worker.

Design, and why:

- Start method: `forkserver` (where the platform has it, else `spawn`), never a
  plain fork of the threaded daemon. The fork server preloads this package (and so
  pydantic, structlog, the `supervisor` package), so replacing a crashed worker
  takes a few milliseconds instead of a fresh interpreter's ~0.4 s. Handler files
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
  jobs queued ahead of the one it runs; the daemon sends new jobs to the
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
- Inside a worker, the main thread runs the handlers, one at a time in the
  order they were sent (sync handlers directly, async ones on one persistent
  event loop per worker, which is much cheaper than `asyncio.run` per job). A
  daemon listener thread owns the receiving end: it queues `run`s for the main
  thread and acts on `cancel`, `reclaim`, `stop` and child-enqueue replies at
  once, so a busy handler can still be cancelled and queued jobs handed back.
"""

from runners.pool.child import worker_main
from runners.pool.runner import ProcessPoolRunner
from runners.pool.workers import default_start_method, describe_exit

__all__ = ["ProcessPoolRunner", "default_start_method", "describe_exit", "worker_main"]
