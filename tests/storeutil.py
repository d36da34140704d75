"""Helpers for the store's fault tests: file permissions that hold even for root, and a
corrupted copy of a real database."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Linux capabilities that let root ignore permission bits (linux/capability.h)
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3
_CAP_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@contextlib.contextmanager
def permissions_enforced() -> Iterator[None]:
    """Inside the block, file permission bits apply to this thread even when it runs as root
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER leave its *effective* set; Linux
    keeps capabilities per thread, and they come back at the end). As another user, nothing
    to do. Skips the test where neither holds (root elsewhere than Linux)."""
    if os.geteuid() != 0:
        yield
        return
    if not sys.platform.startswith("linux"):
        pytest.skip("permission bits cannot be enforced for root here")
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("capget failed: permission bits cannot be enforced for root")
    saved = [(d.effective, d.permitted, d.inheritable) for d in data]
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH)
                           | (1 << _CAP_FOWNER))
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("capset failed: permission bits cannot be enforced for root")
    try:
        yield
    finally:
        for d, (eff, perm, inh) in zip(data, saved):
            d.effective, d.permitted, d.inheritable = eff, perm, inh
        libc.capset(ctypes.byref(header), data)


def corrupt_middle_page(path: Path, seed: int = 0) -> int:
    """Overwrite the page in the middle of the SQLite file at ``path`` with seeded random
    bytes (a mid-file corruption: the header and the first pages stay intact); returns the
    page number."""
    con = sqlite3.connect(path)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    con.close()
    assert pages >= 4, "the database is too small to corrupt in its middle"
    middle = pages // 2
    junk = random.Random(seed).randbytes(page_size)
    with open(path, "r+b") as f:
        f.seek((middle - 1) * page_size)
        f.write(junk)
    return middle
