"""Latency per device: op signatures, measured lookup tables, profilers and analytic models."""
