"""Handlers with a pydantic payload model, one per runtime that validates before it runs."""

from __future__ import annotations

from pydantic import BaseModel, Field

from supervisor import job


class Signup(BaseModel):
    email: str
    age: int = Field(ge=0, le=150)
    tags: list[str] = []


@job("t.signup", runtime="inprocess", max_deliver=3)
def signup(payload: Signup) -> dict[str, object]:
    return {"email": payload.email}


@job("t.signup-sub", runtime="subprocess", max_deliver=3)
def signup_sub(payload: Signup) -> dict[str, object]:
    return {"email": payload.email}
