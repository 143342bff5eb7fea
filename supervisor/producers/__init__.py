"""Producers: the clients that enqueue, inspect, wait for and cancel jobs."""
