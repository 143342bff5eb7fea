"""Handlers that fail inside nested functions, for the stack-trace tests.

The card token comes from the payload and lives only in local variables: a stored
stack trace must name the functions and the raising line, never that value.
"""

from __future__ import annotations

from supervisor import Context, job


@job("t.tb-inprocess", runtime="inprocess", max_deliver=1)
@job("t.tb-process", runtime="process", max_deliver=1)
@job("t.tb-subprocess", runtime="subprocess", max_deliver=1)
def charge(payload: dict, ctx: Context) -> None:
    card_token = payload["card_token"]
    _authorize(card_token)


@job("t.tb-async", runtime="inprocess", max_deliver=1)
async def charge_async(payload: dict, ctx: Context) -> None:
    card_token = payload["card_token"]
    _authorize(card_token)


@job("t.tb-flaky", runtime="inprocess", max_deliver=5, backoff=[0.01])
def charge_flaky(payload: dict, ctx: Context) -> None:
    _authorize(payload["card_token"])


@job("t.tb-huge", runtime="inprocess", max_deliver=1)
def huge(payload: dict, ctx: Context) -> None:
    _explode(int(payload.get("size", 1_000_000)))


def _authorize(card_token: str) -> None:
    amount_cents = 4200
    _call_provider(card_token, amount_cents)


def _call_provider(card_token: str, amount_cents: int) -> None:
    raise RuntimeError("provider down")


def _explode(size: int) -> None:
    raise ValueError("x" * size)
