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
