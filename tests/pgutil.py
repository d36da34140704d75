"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder, listening on
loopback only, on a free port, with password login, stopped (and its folder removed) at the
end.

The server binaries are found on ``PATH`` or in Debian's ``/usr/lib/postgresql/*/bin`` (CI:
``apt-get install -y postgresql``). PostgreSQL refuses to run as root: as root, the server runs
as the ``postgres`` user (Debian's package creates it) through ``runuser``.

Tests that need the server skip, saying why, when psycopg or the binaries are missing, unless
``OPTIMLAB_REQUIRE_POSTGRES=1`` (set by CI), which makes that a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE = os.environ.get("OPTIMLAB_REQUIRE_POSTGRES") == "1"
USER, PASSWORD = "optimlab", "s3cret-for-tests"
#: Seconds pg_ctl waits for the server to start or stop.
START_TIMEOUT_S = 60


def unavailable(reason: str) -> NoReturn:
    """Skip (or, under ``OPTIMLAB_REQUIRE_POSTGRES=1``, fail) saying ``reason``."""
    if REQUIRE:
        pytest.fail(f"{reason} (OPTIMLAB_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


def binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or ``None``."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: its URL (``postgresql://optimlab:...@127.0.0.1:PORT/``) and folder."""

    port: int
    folder: Path

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database on the server; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a server for the block; skips (see the module docstring) when it cannot."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install 'optimlab[distributed]')")
    bin_dir = binaries()
    if bin_dir is None:
        unavailable("the PostgreSQL server binaries (initdb, pg_ctl) are not installed "
                    "(apt-get install postgresql)")
    assert bin_dir is not None
    run_as: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="optimlab-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            unavailable("running as root and there is no 'postgres' user to run the server "
                        "as (PostgreSQL refuses root)")
        os.chown(folder, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, pwfile, log = folder / "data", folder / "pw", folder / "log"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    port = free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run([*run_as, *cmd], capture_output=True, text=True,
                              timeout=START_TIMEOUT_S + 30)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip() or done.stdout}\n"
                               f"{log.read_text() if log.exists() else ''}")

    started = False
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off "
                   "-c max_connections=100")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
            "-t", str(START_TIMEOUT_S), "start")
        started = True
        yield Server(port, folder)
    finally:
        if started:
            with contextlib.suppress(Exception):
                run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                    "stop")
        shutil.rmtree(folder, ignore_errors=True)
