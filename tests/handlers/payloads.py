"""Handlers with a pydantic payload model, one per runtime that validates before it runs."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from supervisor import job


class Signup(BaseModel):
    email: str
    age: int = Field(ge=0, le=150)
    tags: list[str] = []
    at: datetime | None = None  # pydantic takes naive date-times; JSON Schema's date-time does not
    ref: uuid.UUID | None = None  # and UUIDs without dashes


@job("t.signup", runtime="inprocess", max_deliver=3)
def signup(payload: Signup) -> dict[str, object]:
    return {"email": payload.email}


@job("t.signup-sub", runtime="subprocess", max_deliver=3)
def signup_sub(payload: Signup) -> dict[str, object]:
    return {"email": payload.email}
