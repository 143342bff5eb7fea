"""`python -m supervisor.cli` = the `job-supervisor` command (as `python -m supervisor`)."""

from supervisor.cli import main

main()
