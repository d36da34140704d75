"""Fault injection: kill `optimlab compare` at random points, resume, and check nothing is lost.

What it does
------------
A study of ``--tasks x --seeds`` short runs (one optimizer; each task a *marker task*: a
built-in 2-D task whose setup appends ``task seed pid time`` to a log, so that every execution
of every run is counted) runs in a subprocess that is interrupted ``--kills`` times: SIGKILL to
the main process alone (its workers must die with it), and every ``--sigterm-every``-th time
SIGTERM (it must exit 143 with a resume hint). A kill lands either during start-up (a quarter of
them, at a random time) or once one or two more runs are stored, a random fraction of a run
later. After each, the same command resumes the study; after the last, an uninterrupted resume
finishes it. A clean, never interrupted run of the same study goes to a second store.

What it counts
--------------
* **runs lost**: a run whose progress line (``sgd on TASK seed N: ok``, printed after the run is
  stored; stderr is a pseudo-terminal, so every run's line is drawn) appeared before a kill but
  that the store does not hold after it;
* **runs duplicated**: an execution of a run that started after the run was stored (its
  ``finished`` time), or a run stored twice;
* **orphans**: processes of a killed command (its whole tree, read from /proc just before the
  kill) still alive 10 s after it;
* **SIGTERM**: exit status 143 and "run the same command again to resume" on stderr (a
  SIGTERM that lands in the interpreter's start-up, before optimlab's handler exists, ends it
  with the default action, -15, before anything began: counted apart);
* **store equal to a clean run**: the same keys, and every record equal but for its wall-clock
  and memory measurements (runs are deterministic on CPU).

Usage::

    python benchmarks/fault_injection.py --kills 20 --seed 0 --out fault-injection/

Exit status 0 when nothing was lost or duplicated, no orphan was left, every SIGTERM exited
143 with the hint and the final store equals the clean run's; 1 otherwise. Linux only (/proc,
a pseudo-terminal).
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: The marker tasks (factories of this module) and the built-in task each wraps.
MARKED = {"quad": "quadratic", "rosen": "rosenbrock"}
#: Record fields that measure wall-clock time or memory (they differ between equal runs).
TIMING = {"train_seconds", "wall_seconds", "time_to_target", "peak_memory_bytes",
          "warmup_seconds", "seconds_per_step"}
PROGRESS = re.compile(r"(\S+) on (fault_injection:\w+) seed (\d+): (ok|diverged|failed)")


# --------------------------------------------------------------------------- marker tasks


def _marked(name: str, **options: Any) -> Any:
    """The built-in task ``MARKED[name]``, whose setup first appends ``fault_injection:name
    seed pid time`` to ``$FAULT_LOG``."""
    from optimlab.lab.tasks import Task, make_task

    inner = make_task(MARKED[name], **options)

    class Marked(Task):
        info = inner.info
        optimum = inner.optimum

        def setup(self, seed: int = 0, device: Any = "cpu") -> None:
            log = os.environ.get("FAULT_LOG")
            if log:
                with open(log, "a", encoding="utf-8") as f:
                    f.write(f"fault_injection:{name} {seed} {os.getpid()} {time.time():.6f}\n")
            inner.setup(seed, device)
            self.model, self.n_train = inner.model, inner.n_train

        def batches(self, batch_size: int | None, generator: Any) -> Any:
            return inner.batches(batch_size, generator)

        def loss(self, batch: Any) -> Any:
            return inner.loss(batch)

        def full_loss(self) -> Any:
            return inner.full_loss()

        def evaluate(self) -> dict[str, float]:
            return inner.evaluate()

    return Marked()


def quad(**options: Any) -> Any:
    """The quadratic, marked."""
    return _marked("quad", **options)


def rosen(**options: Any) -> Any:
    """Rosenbrock, marked."""
    return _marked("rosen", **options)


# --------------------------------------------------------------------------- the study


def write_study(path: Path, name: str, seeds: int, steps: int) -> Path:
    tasks = [f"fault_injection:{t}" for t in MARKED]
    tables = "".join(f'\n[task."{t}"]\nsteps = {steps}\n' for t in tasks)
    path.write_text(f'name = "{name}"\ntasks = {json.dumps(tasks)}\noptimizers = ["sgd"]\n'
                    f"seeds = {seeds}\nbatch_size = [8]\nheldout_seeds = 0\n\n"
                    f"[hyperparams.sgd]\nlr = 0.001\n{tables}")
    return path


def command(study: Path, db: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "optimlab.cli", "compare", "--study", str(study),
            "--store", f"sqlite:///{db}", "--workers", str(workers), "--no-report"]


def environment(log: Path) -> dict[str, str]:
    path = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, PYTHONPATH=path, OPTIMLAB_ALLOW_IMPORT="fault_injection",
                FAULT_LOG=str(log), PYTHONUNBUFFERED="1")


# --------------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", encoding="utf-8", errors="replace") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Running (a zombie is not: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stored(db: Path) -> dict[str, float]:
    """key -> time stored, of every run in ``db`` (empty while it does not exist)."""
    if not db.exists():
        return {}
    for _ in range(50):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                return dict(con.execute("SELECT key, finished FROM optimlab_runs"))
            finally:
                con.close()
        except sqlite3.Error:
            time.sleep(0.1)
    raise RuntimeError(f"cannot read {db}")


class Session:
    """One run of the command, its stderr on a pseudo-terminal read by a thread."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=slave, env=env)
        os.close(slave)
        self.master = master
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every holder of the terminal is gone
                return
            if not data:
                return
            self.chunks.append(data)

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace").replace("\r", "\n")

    def printed(self) -> set[tuple[str, int]]:
        """(task, seed) of every run whose progress line was drawn so far."""
        return {(m.group(2), int(m.group(3))) for m in PROGRESS.finditer(self.text())}

    def finish(self, timeout: float) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self.reader.join(10)
        os.close(self.master)
        return code


def key_of(db: Path) -> dict[tuple[str, int], str]:
    """(task, seed) -> run key of the study's records in ``db``."""
    from optimlab.lab.store import open_store
    with open_store(f"sqlite:///{db}") as store:
        return {(r.config.task, r.config.seed): r.key for r in store.study_records("faults")}


def stable(record: Any) -> dict[str, Any]:
    d = record.to_dict()
    out = {k: v for k, v in d.items() if k not in TIMING}
    out["curve"] = {k: v for k, v in d["curve"].items() if k != "time"}
    out["evals"] = {k: v for k, v in d["evals"].items() if k != "time"}
    return out


def records(db: Path) -> dict[str, dict[str, Any]]:
    from optimlab.lab.store import open_store
    with open_store(f"sqlite:///{db}") as store:
        return {r.key: stable(r) for r in store.study_records("faults")}


# --------------------------------------------------------------------------- the experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="interruptions (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the stores, the execution log and summary.json "
                             "(default: a temporary folder)")
    parser.add_argument("--seeds", type=int, default=24, help="seeds per task (default 24)")
    parser.add_argument("--steps", type=int, default=1500,
                        help="steps per run (default 1500: about half a second)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sigterm-every", type=int, default=5,
                        help="every k-th interruption is SIGTERM (default 5)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.seeds < 1 or args.steps < 1 or args.workers < 1 \
            or args.sigterm_every < 1:
        parser.error("--kills must be >= 0; --seeds, --steps, --workers, --sigterm-every >= 1")
    out = args.out or Path(tempfile.mkdtemp(prefix="optimlab-faults-"))
    out.mkdir(parents=True, exist_ok=True)
    for old in ("killed.db", "clean.db", "executions.log", "clean.log"):
        for f in out.glob(old + "*"):
            f.unlink()
    study = write_study(out / "faults.toml", "faults", args.seeds, args.steps)
    n_runs = args.seeds * len(MARKED)
    killed_db, clean_db = out / "killed.db", out / "clean.db"
    log = out / "executions.log"
    rng = random.Random(args.seed)

    t0 = time.time()
    clean = Session(command(study, clean_db, args.workers), environment(out / "clean.log"))
    clean_code = clean.finish(1800)
    clean_s = time.time() - t0
    print(f"clean run: exit {clean_code}, {len(stored(clean_db))}/{n_runs} runs, "
          f"{clean_s:.0f} s", flush=True)

    lost: list[str] = []
    orphans: list[str] = []
    sigterms: list[bool] = []
    early = 0
    events: list[dict[str, Any]] = []
    for k in range(args.kills):
        sig = signal.SIGTERM if (k + 1) % args.sigterm_every == 0 else signal.SIGKILL
        before = len(stored(killed_db))
        s = Session(command(study, killed_db, args.workers), environment(log))
        if rng.random() < 0.25:
            delay = rng.uniform(0.0, 3.0)
            when = f"start-up + {delay:.2f} s"
            time.sleep(delay)
        else:
            more = rng.choice((1, 2))
            deadline = time.time() + 300
            while (len(stored(killed_db)) < min(before + more, n_runs)
                   and s.proc.poll() is None and time.time() < deadline):
                time.sleep(0.02)
            extra = rng.uniform(0.0, 0.7)
            when = f"{more} more stored + {extra:.2f} s"
            time.sleep(extra)
        tree = descendants(s.proc.pid)
        finished_first = s.proc.poll() is not None
        os.kill(s.proc.pid, sig)
        code = s.finish(120)
        printed = s.printed()  # everything it drew, all of it before it ended
        gone_by = time.time() + 10
        while time.time() < gone_by and any(alive(p) for p in tree):
            time.sleep(0.05)
        left = [p for p in tree if alive(p)]
        for p in left:
            orphans.append(f"kill {k + 1}: pid {p}")
            os.kill(p, signal.SIGKILL)
        keys = stored(killed_db)
        mapping = key_of(killed_db) if keys else {}
        missing = sorted(f"{t} seed {seed}" for t, seed in printed
                         if mapping.get((t, seed)) not in keys)
        lost += [f"kill {k + 1}: {m}" for m in missing]
        if sig == signal.SIGTERM and not finished_first:
            if code == -signal.SIGTERM and not s.text().strip():
                early += 1  # in the interpreter's start-up, before optimlab could handle it
            else:
                sigterms.append(code == 143
                                and "run the same command again to resume" in s.text())
        events.append({"kill": k + 1, "signal": signal.Signals(sig).name, "when": when,
                       "exit": code, "stored_before": before, "stored_after": len(keys),
                       "progress_lines": len(printed), "processes": len(tree),
                       "left_alive": len(left), "finished_first": finished_first})
        print(f"kill {k + 1:>2}: {signal.Signals(sig).name:<7} at {when:<26} exit {code}, "
              f"runs stored {before} -> {len(keys)}, {len(tree)} processes, "
              f"{len(left)} left", flush=True)

    final = Session(command(study, killed_db, args.workers), environment(log))
    final_code = final.finish(1800)
    final_stored = stored(killed_db)

    # executions against the time each run was stored
    mapping = key_of(killed_db)
    duplicated = []
    executions = 0
    for line in log.read_text().splitlines() if log.exists() else []:
        task, seed, pid, started = line.split()
        executions += 1
        key = mapping.get((task, int(seed)))
        if key is not None and float(started) > final_stored.get(key, float("inf")):
            duplicated.append(f"{task} seed {seed} (pid {pid}) started after it was stored")
    con = sqlite3.connect(f"file:{killed_db}?mode=ro", uri=True)
    twice = con.execute("SELECT COUNT(*) - COUNT(DISTINCT key) FROM optimlab_runs"
                        ).fetchone()[0]
    con.close()
    duplicated += [f"{twice} runs stored twice"] if twice else []

    a, b = records(killed_db), records(clean_db)
    equal = set(a) == set(b) and all(a[k] == b[k] for k in a)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    summary = {
        "kills": args.kills, "sigkill": sum(e["signal"] == "SIGKILL" for e in events),
        "sigterm": sum(e["signal"] == "SIGTERM" for e in events), "runs": n_runs,
        "executions": executions, "lost": len(lost), "duplicated": len(duplicated),
        "orphans": len(orphans), "sigterm_ok": f"{sum(sigterms)}/{len(sigterms)}",
        "sigterm_before_startup": early,
        "final_exit": final_code, "final_stored": len(final_stored),
        "store_equal_to_clean_run": equal, "clean_seconds": round(clean_s, 1),
        "details": {"lost": lost, "duplicated": duplicated, "orphans": orphans,
                    "differ": differ[:10], "events": events},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    ok = (not lost and not duplicated and not orphans and all(sigterms) and final_code == 0
          and len(final_stored) == n_runs and equal and clean_code == 0)
    print(f"\nfault injection: {args.kills} interruptions ({summary['sigkill']} SIGKILL, "
          f"{summary['sigterm']} SIGTERM) of a {n_runs}-run study, then a final resume\n"
          f"  executions: {executions} for {n_runs} runs (work redone after kills: "
          f"{executions - n_runs})\n"
          f"  runs lost: {len(lost)}\n"
          f"  runs duplicated: {len(duplicated)}\n"
          f"  orphans: {len(orphans)}\n"
          f"  SIGTERM exits 143 with a resume hint: {summary['sigterm_ok']}"
          + (f" ({early} more landed in the interpreter's start-up: exit -15, nothing begun)"
             if early else "") + "\n"
          f"  final resume: exit {final_code}, {len(final_stored)}/{n_runs} runs stored\n"
          f"  store equal to clean run: {'yes' if equal else 'no'}\n"
          f"  details: {out / 'summary.json'}")
    for what in ("lost", "duplicated", "orphans"):
        for line in summary["details"][what][:10]:
            print(f"  {what}: {line}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
