"""Fixtures for the aggregator tests."""

from tests.aggregator_service.helpers import start_app

__all__ = ["start_app"]
