"""Scheduled test handlers: a per-second tick."""

from __future__ import annotations

from supervisor import Context, job


@job("t.every-second", schedule="* * * * * *", schedule_payload={"source": "cron"})
def every_second(payload: dict, ctx: Context) -> dict[str, str]:
    return {"ran": ctx.job_id}
