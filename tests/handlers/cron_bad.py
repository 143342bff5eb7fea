"""A handler whose schedule is invalid: reported, and the type still serves."""

from __future__ import annotations

from supervisor import job


@job("t.bad-cron", schedule="61 * * * *")
def bad_cron(payload: dict) -> str:
    return "served anyway"


@job("t.bad-zone", schedule="0 * * * *", timezone="Mars/Olympus")
def bad_zone(payload: dict) -> str:
    return "served anyway"
