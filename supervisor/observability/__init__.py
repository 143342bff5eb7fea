"""Observability: structured logs, traces and metrics."""
