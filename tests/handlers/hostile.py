"""A type with a (yearly) schedule, for the hostile-data tests: every kind of key exists for it."""

from __future__ import annotations

from pydantic import BaseModel

from supervisor import Context, job


class Echo(BaseModel):
    value: str = ""


@job("h.echo", concurrency=10, max_deliver=2, backoff=[0.05], schedule="0 0 1 1 *")
async def echo(payload: Echo, ctx: Context) -> dict[str, object]:
    return {"value": payload.value, "attempt": ctx.attempt}
