"""A handler that wedges the daemon's event loop on purpose (the systemd watchdog test).

`t.wedge` is an ``async`` handler that calls the blocking ``time.sleep``: the
in-process runner awaits it on the daemon's own event loop, so nothing else on
that loop runs -- including the WATCHDOG=1 pings -- until it returns.
"""

from __future__ import annotations

import time

from pydantic import BaseModel

from supervisor import Context, job


class Wedge(BaseModel):
    seconds: float = 30.0


@job("t.wedge", max_deliver=1)
async def wedge(payload: Wedge, ctx: Context) -> str:
    time.sleep(payload.seconds)  # noqa: ASYNC251 (blocking the loop is the point)
    return "unwedged"
