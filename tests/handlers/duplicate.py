"""Declares a name that basic.py already declares."""

from supervisor import job


@job("t.echo")
def echo_again(payload: dict) -> None:
    return None


@job("t.unique-in-duplicate-file")
def unique(payload: dict) -> str:
    return "still served"
