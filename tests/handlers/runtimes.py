"""One handler under two runtimes: each reports the pid it ran in."""

from __future__ import annotations

import os

from supervisor import Context, job


@job("t.pid-inprocess", runtime="inprocess")
@job("t.pid-subprocess", runtime="subprocess")
def pid(payload: dict, ctx: Context) -> dict[str, object]:
    print(f"running {ctx.job_name} attempt {ctx.attempt}", flush=True)
    ctx.progress(50, "half way")
    return {"pid": os.getpid(), "job": ctx.job_name, "secret_visible": "SECRET_TOKEN" in os.environ}


@job("t.pid-process", runtime="process", concurrency=10)
def pid_process(payload: dict, ctx: Context) -> dict[str, object]:
    import time

    started = time.time()
    time.sleep(float(payload.get("sleep", 0)))
    return {"pid": os.getpid(), "started": started, "ended": time.time()}


@job("t.crash-once", runtime="process", max_deliver=3, backoff=[0.05])
def crash_once(payload: dict, ctx: Context) -> dict[str, object]:
    if ctx.attempt == 1:
        how = payload.get("how", "kill")
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), 9)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@job("t.two-seconds-inprocess", runtime="inprocess", concurrency=20, ack_wait=60)
@job("t.two-seconds-process", runtime="process", concurrency=20, ack_wait=60)
@job("t.two-seconds-subprocess", runtime="subprocess", concurrency=20, ack_wait=60)
def two_seconds(payload: dict, ctx: Context) -> dict[str, object]:
    import time

    time.sleep(2)
    return {"pid": os.getpid()}
