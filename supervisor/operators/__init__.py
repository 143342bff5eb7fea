"""Operators: the admin read model, the HTTP API and dashboard assets, the command line."""
