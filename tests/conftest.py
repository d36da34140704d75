"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Slow tests run by default; deselect them with ``-m "not slow"`` for a quick loop.
    config.addinivalue_line(
        "markers", "slow: slow test (torch.compile, end-to-end CLI and lab runs, subprocesses and "
        "multi-process runs, long training); runs by default"
    )
