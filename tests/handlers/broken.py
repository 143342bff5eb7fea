"""A handler file with a syntax error: it must be reported and not stop the others."""

from supervisor import job


@job("t.broken")
def broken(payload: dict) -> None
    return None
