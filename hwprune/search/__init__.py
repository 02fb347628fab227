"""Latency-constrained width search."""
