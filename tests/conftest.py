"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Slow tests run by default; deselect them with ``-m "not slow"`` for a quick loop.
    config.addinivalue_line(
        "markers", "slow: slow test (compiles optimizers with torch.compile); runs by default"
    )
