"""Aggregation strategies: pure numpy, no I/O, imported by nothing else of the service."""
