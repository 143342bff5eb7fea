"""`python -m supervisor.operators.cli` = the `job-supervisor` command (as `python -m supervisor`)."""

from supervisor.operators.cli import main

main()
