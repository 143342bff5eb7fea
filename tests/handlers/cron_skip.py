"""Every-5-seconds schedules, one per misfire policy."""

from __future__ import annotations

from supervisor import job


@job("t.every-5s", schedule="*/5 * * * * *")
def every_5s(payload: dict) -> str:
    return "ok"


@job("t.every-5s-skip", schedule="*/5 * * * * *", misfire="skip")
def every_5s_skip(payload: dict) -> str:
    return "ok"
