"""`python -m supervisor` = the `job-supervisor` command."""

from supervisor.operators.cli import main

main()
