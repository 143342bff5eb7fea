"""`python -m supervisor` = the `job-supervisor` command."""

from supervisor.cli import main

main()
