"""What a report records about the machine and the software, to reproduce its runs."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

__all__ = ["available_cores", "cpu_model", "environment"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def environment() -> dict[str, str]:
    """Hardware and library versions, as strings."""
    env = {
        "optimlab": _version("optimlab"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "scikit-learn": _version("scikit-learn"),
        "matplotlib": _version("matplotlib"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu cores available": str(available_cores()),
        "torch threads per run": "1 (runs execute in parallel worker processes)",
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = str(torch.version.cuda)
    return env
