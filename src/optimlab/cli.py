"""The ``optimlab`` command line: ``list``, ``run``, ``compare``, ``report``.

Every command prints one clear error line (plus a hint) and exits with status 2 on bad input,
usage errors caught by argparse included; no traceback reaches the user for anything they can
fix. torch and the lab are imported by the commands that use them, so ``--help`` and
``--version`` answer at once.

The exit status says whether every run succeeded (:data:`EXIT_STATUS`): 0 all finished (``ok``
or ``diverged``: divergence is a result), 3 some runs failed (recorded with their errors; the
report is still written), 2 bad input or a store fault (one line), 1 stopped by a fault outside
the runs (a worker process lost for good, a bug of ours: one line), and 130 / 143 / 129 when
interrupted by SIGINT / SIGTERM / SIGHUP, which all stop the same way: nothing more starts, the
runs that finished are stored, the workers are stopped, and a line says how to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__

__all__ = ["main"]

#: What the rankings mean (shown by --help; the same definition heads every report).
RANKING = """ranking:
  Arms are ranked on each task by the WORK to reach the task's target and stay there:
  gradient evaluations (= steps for optimizers that evaluate the gradient once per step)
  until the run settles at or below the target for the rest of the run, mean over seeds
  with a 95% interval (a seed that never settles counts as the whole budget); arms that
  never settle on most seeds follow, by their final target metric. Arms whose difference
  from the best is within seed noise (the 95% interval of the paired difference contains 0,
  or it is within the evaluation grid's resolution) are marked "tied". Wall-clock time is
  reported with the warm-up excluded, and ranks only with --rank-by time (ties within the
  measured timing noise). Deterministic runs (full batch on a task the seed does not change)
  run one seed."""

#: What the exit status says (shown by --help of the commands that run things).
EXIT_STATUS = """exit status:
  0    every run (tuning trial) finished: ok, diverged or pruned (results, not faults)
  3    some runs or trials failed (an error in the task or the optimizer, or a worker
       process that died twice); they are stored with their errors, the report is written
  2    bad input, or a results-store fault (one line saying what to do)
  1    stopped by another fault (one line); finished runs are stored
  130  interrupted by Ctrl-C (SIGINT), 143 by SIGTERM, 129 by SIGHUP: finished runs are
       stored, the workers stopped; run the same command again to resume"""

EXAMPLES = {
    "main": """examples:
  optimlab compare                      # the default comparison (about 40 s on 2 cores)
  optimlab list                         # tasks, optimizers, schedules
  optimlab run --task rosenbrock --optimizer adam --lr 0.05
  optimlab compare --tasks mlp-digits --optimizers sgd,adam --batch-size full,1,32
  optimlab report --study default --out report/
  optimlab lr-find --task mlp-digits --optimizer sgd""",
    "run": """examples:
  optimlab run --task rosenbrock --optimizer adam --lr 0.05
  optimlab run --task mlp-digits --optimizer sgd --lr 0.1 --hp momentum=0.9 --batch-size 64
  optimlab run --task mlp-digits --task-option depth=4 --task-option init=he --optimizer adamw
  optimlab run --task mypkg.tasks:make_task --optimizer adam --steps 200 --allow-import mypkg

A task or optimizer named by import path is imported only from a package you allow
(--allow-import PKG or OPTIMLAB_ALLOW_IMPORT=PKG): names in files are data, not code.""",
    "compare": """examples:
  optimlab compare                                   # 7 classic optimizers x 4 tasks x 3 seeds
  optimlab compare --tasks mlp-digits --optimizers sgd,adam --batch-size full,1,32
  optimlab compare --tasks quadratic --optimizers sgd,momentum --lr 1e-3,1e-2,1e-1
  optimlab compare --study my-study.toml --workers 8
  optimlab compare --tasks mlp-digits --optimizers adam --store sqlite:///runs/all.db
  optimlab compare --tasks gru-charlm --optimizers sgd --lr 5 --clip 1.0
  optimlab compare --tasks mlp-digits --optimizers sgd --batch-size 8,32,128 --epochs 2 \\
      --lr 0.05 --lr-scaling linear --base-batch-size 32
  optimlab compare --study default.toml --seeds 5        # a study file, some settings changed

A study is resumable: run the same command again and finished runs are skipped. When the
study sweeps a hyperparameter, each optimizer's best arm per task is re-run on fresh
(held-out) seeds as "<optimizer> best" (--heldout-seeds; 0 turns it off).

""" + RANKING + "\n\n" + EXIT_STATUS,
    "report": """examples:
  optimlab report                          # list the studies in the store
  optimlab report --study default          # write its report to optimlab-results/default/
  optimlab report --study default --out report/ --store sqlite:///runs/all.db""",
    "lr-find": """examples:
  optimlab lr-find --task mlp-digits --optimizer sgd
  optimlab lr-find --task logreg-breast-cancer --optimizer adam --batch-size full --end-lr 100
  optimlab lr-find --task mlp-digits --optimizer sgd --hp momentum=0.9 --rule steepest

The learning rate grows exponentially from --start-lr to --end-lr over --steps steps; the
smoothed loss is plotted against it and a learning rate is suggested (valley, steepest or
min_loss_div10 rule). The test stops when the loss diverges.""",
    "tune": """examples:
  optimlab tune --tasks mlp-digits --optimizers sgd,momentum,adam --trials 20
  optimlab tune --tasks logreg-breast-cancer --optimizers adam,adamw --space full --trials 30
  optimlab tune --tasks quadratic --optimizers sgd,adam --trials 10 --storage postgresql://...

Every optimizer gets the same number of trials of the same length (an equal budget, at least
8 trials: the first 8 cover the search range evenly); trials minimize the ranking objective
(work to target, then the final target metric), so that tuning selects what the ranking
rewards. The best configuration of each optimizer is re-run on --seeds held-out seeds as
"<optimizer> best". Running the same command again resumes the tuning.

""" + EXIT_STATUS,
    "worker": """examples:
  optimlab compare --study my-study.toml --store postgresql://me:pw@db-host/lab  # machine 1
  optimlab worker --store postgresql://me:pw@db-host/lab --study my-study   # any other one
  optimlab worker --store postgresql://... --study my-study --executor ray --address auto

""" + EXIT_STATUS,
    "advise": """examples:
  optimlab advise --task mlp-digits --budget 5
  optimlab advise --task mypkg.tasks:make_task --budget 30 --optimizers sgd,adam,adamw \\
      --allow-import mypkg
  optimlab advise --no-compute              # rules from the lab's recorded results
  optimlab advise --distill default --evidence-out evidence.json   # evidence of a study

Every candidate gets the same tuning budget, never fewer than 8 trials: a --budget too small
for that is raised, with a warning. The re-runs are ranked by work to target; when the best
cannot be told from others within seed noise, the advice says "no clear winner".
The packaged evidence (--no-compute without a store of your own) is regenerated with:
  optimlab compare --no-report && optimlab advise --distill default \\
      --evidence-out src/optimlab/lab/studies/evidence.json""",
    "landscape": """examples:
  optimlab landscape --task mlp-digits --optimizers sgd,adam,sam
  optimlab landscape --task mlp-digits --optimizers sgd,adam --task-option label_noise=0.2 \
      --steps 2000 --resolution 31 --span 0.5 --out landscapes/

Each optimizer trains the task from the same seed (a lab run with its default
hyperparameters, or --lr); then the training loss is drawn on a 2-D slice around each
solution along filter-normalized random directions (Li et al. 2018) and along the straight
line between consecutive solutions. Data in landscape.json, plots as SVG, index.html.""",
    "list": """examples:
  optimlab list
  optimlab list tasks""",
}


class CLIError(Exception):
    """A user error: printed as one line with a hint, exit status 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    first = doc.splitlines()[0] if doc else ""
    return first.split(". ")[0].rstrip(".").replace("``", "")


# --------------------------------------------------------------------------- list


def _list(what: str = "all") -> str:
    from . import transforms
    from .lab.optimizers import LAB_OPTIMIZERS
    from .lab.runs import SCHEDULES
    from .lab.tasks import TASKS

    lines: list[str] = []
    if what in ("all", "optimizers"):
        lines.append("Optimizers (the lab's names; classes are drop-in torch.optim optimizers):")
        for name, opt in LAB_OPTIMIZERS.items():
            lines.append(f"  {name:<19} optimlab.{opt.cls.__name__:<17} {opt.description}")
        lines.append("  (any torch.optim.Optimizer class as 'package.module:Class', with "
                     "--allow-import package)")
        lines.append("")
    if what in ("all", "transforms"):
        lines.append("Transforms (compose with optimlab.chain):")
        for name in transforms.__all__:
            obj = getattr(transforms, name)
            if callable(obj) and name[0].islower() and name != "check_range":
                lines.append(f"  {name:<28} {_first_line(obj)}")
        lines.append("")
    if what in ("all", "tasks"):
        lines.append("Tasks (user tasks as 'package.module:factory', with --allow-import "
                     "package):")
        for name, factory in sorted(TASKS.items()):
            try:
                info = factory().info
                lines.append(f"  {name:<24} [{info.kind}] {info.description}")
            except (TypeError, ValueError):  # a preset that needs a data path
                lines.append(f"  {name:<24} {_first_line(factory)}")
        lines.append("")
    if what in ("all", "schedules"):
        lines.append("Learning-rate schedules (--schedule):")
        for name, (_, description) in SCHEDULES.items():
            lines.append(f"  {name:<14} {description}")
    return "\n".join(lines).rstrip()


# --------------------------------------------------------------------------- parsing helpers


def _value(text: str) -> Any:
    """A command-line value: JSON/TOML-ish scalars and comma lists (``0.9,0.999``)."""
    text = text.strip()
    if "," in text:
        return [_value(t) for t in text.split(",") if t.strip()]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"{flag} {item!r}: expected KEY=VALUE", f"e.g. {flag} momentum=0.9")
        out[key.strip()] = _value(value)
    return out


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str | None, flag: str) -> list[float] | None:
    items = _csv(text)
    if items is None:
        return None
    try:
        return [float(t) for t in items]
    except ValueError:
        raise CLIError(f"{flag} {text!r}: expected numbers separated by commas",
                       f"e.g. {flag} 1e-3,1e-2") from None


# --------------------------------------------------------------------------- commands


def _store(url: str | None) -> Any:
    from .lab.store import open_store
    return open_store(url)


def _execute_study(spec: Any, store: Any, workers: int | None, replace: bool = False,
                   population: str = "auto", executor: Any = None) -> Any:
    from .lab.progress import Progress
    from .lab.study import InlineExecutor, ProcessExecutor, count_runs, plan, plan_notes, run_study

    runs = plan(spec)
    total = count_runs(spec)
    done = len(store.finished({r.key for r in runs}))
    bar = Progress(total, "runs", start=done)
    name = spec.resolved_name
    if done:
        bar.message(f"resuming study {name!r}: {done} of {total} runs already stored")
    else:
        bar.message(f"study {name!r}: {total} runs")
    for note in plan_notes(spec, runs):
        bar.message(f"note: {note}")

    def progress(count: int, total: int, record: Any) -> None:
        bar.total = total
        bar.update(count, f"{record.label} on {record.task} seed {record.seed}: "
                          f"{record.status}")

    shared = {"progress": progress, "replace": replace, "message": bar.message,
              "population": population}
    if executor is not None:
        return run_study(spec, store, executor=executor, **shared)
    if workers is None:  # run_study's choice: a pool on every core when it helps
        return run_study(spec, store, **shared)
    with (InlineExecutor() if workers == 1 else ProcessExecutor(workers)) as executor:
        return run_study(spec, store, executor=executor, **shared)


def _executor(args: argparse.Namespace) -> Any:
    """The executor ``--executor``/``--address`` name: ``None`` for the local default (a
    process pool of ``--workers``), a :class:`~optimlab.lab.executor_ray.RayExecutor` for
    ``ray``; close it after use."""
    if getattr(args, "executor", "local") != "ray":
        if getattr(args, "address", None):
            raise CLIError("--address names a Ray cluster; give it with --executor ray")
        return None
    from .lab.executor_ray import RayError, RayExecutor
    try:
        return RayExecutor(args.address, slots=args.workers)
    except RayError as e:
        raise CLIError(str(e), "or run without --executor ray (the local process pool)"
                       ) from None


def _write_report(store: Any, name: str, out: Path | None, *, quiet: bool = False,
                  storage: str | None = None) -> Path:
    from .lab.environment import environment
    from .lab.progress import Progress
    from .lab.report import summary_table, write_report

    records = store.study_records(name)
    spec = store.study_spec(name)
    if not records:
        raise CLIError(f"study {name!r} has no finished runs yet",
                       "run it with optimlab compare first")
    out = out or Path("optimlab-results") / _safe_dirname(name)
    bar = Progress(1, "report")
    from .lab.tune import tuning_for_study
    tuning = tuning_for_study(store, name, storage)
    try:
        index = write_report(records, out, title=f"optimlab: {name}", study=spec,
                             environment=environment(), tuning=tuning,
                             progress=None if quiet else (lambda m: bar.message(f"report: {m}")))
    except OSError as e:  # not writable, no space: the runs are stored all the same
        raise CLIError(f"cannot write the report to {str(out)!r}: {e.strerror or e}",
                       f"the runs are stored; write the report elsewhere with: optimlab "
                       f"report --study {_quoted(name)} --out DIR") from None
    if not quiet:
        rank_by = spec.get("rank_by", "work") if isinstance(spec, dict) else "work"
        print(summary_table(records, rank_by=rank_by))
    return index


def _quoted(text: str) -> str:
    """``text`` as one shell word."""
    import shlex
    return shlex.quote(text)


def _safe_dirname(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".-")
    return safe or "study"


def _cmd_list(args: argparse.Namespace) -> int:
    print(_list(args.what))
    return 0


def _allow_import(args: argparse.Namespace) -> tuple[str, ...]:
    """The packages --allow-import names (repeatable, comma-separated); OPTIMLAB_ALLOW_IMPORT
    is read where the check runs (optimlab.lab.imports)."""
    from .lab.imports import allow_list
    return allow_list(args.allow_import, field="--allow-import")


def _budget_and_clip(args: argparse.Namespace) -> dict[str, Any]:
    """The study settings of the options shared by run and compare (those given)."""
    out = {}
    for key in ("steps", "examples", "epochs", "seconds", "clip_norm", "clip_value"):
        if getattr(args, key, None) is not None:
            out[key] = getattr(args, key)
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from .lab.distributed import torchrun_session

    # Under torchrun (WORLD_SIZE > 1) the run trains with DDP on every process; rank 0 runs
    # the command, the others execute the runs it sends them (optimlab.lab.distributed).
    with torchrun_session() as session:
        if session is not None and not session.is_leader:
            return session.follow()
        return _run_once(args)


def _run_once(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .lab.spec import StudySpec
    from .lab.study import default_name

    hyper = _pairs(args.hp, "--hp")
    if args.lr is not None:
        hyper["lr"] = args.lr
    spec = StudySpec.from_mapping({
        "tasks": [args.task], "optimizers": [args.optimizer], "seeds": [args.seed],
        "batch_size": args.batch_size, "schedule": args.schedule,
        "telemetry": args.telemetry, "sharpness": args.sharpness, **_budget_and_clip(args),
        "hyperparams": {args.optimizer: hyper} if hyper else {},
        "task": {args.task: {"options": _pairs(args.task_option, "--task-option")}},
    }, source="optimlab run", allow_import=_allow_import(args))
    spec = replace(spec, name=args.name or "run-" + default_name(spec).removeprefix("study-"))
    with _store(args.store) as store:
        _execute_study(spec, store, workers=1, replace=args.replace)
        record = store.study_records(spec.resolved_name)[0]
        if args.json:
            print(json.dumps(record.to_dict(), indent=1))
        else:
            _print_run(record)
        if args.out:
            _write_report(store, spec.resolved_name, Path(args.out), quiet=True)
            print(f"report: {Path(args.out) / 'index.html'}")
    return _status_of_runs([record])


#: At most this many failed runs are listed by :func:`_status_of_runs` (the report has all).
FAILED_SHOWN = 5


def _status_of_runs(records: Sequence[Any], what: str = "runs") -> int:
    """The exit status of a command whose runs are ``records``: 0 when none failed, else 3
    after a few lines on stderr naming the failed runs and their errors."""
    bad = [r for r in records if r.status == "failed"]
    if not bad:
        return 0
    print(f"optimlab: {len(bad)} of {len(records)} {what} failed; they are stored with their "
          "errors (see the report; a rerun does not repeat them):", file=sys.stderr)
    for r in bad[:FAILED_SHOWN]:
        error = " ".join(str(r.error).split())
        print(f"  {r.label or r.optimizer} on {r.task} seed {r.seed}: "
              f"{error[:200]}{'...' if len(error) > 200 else ''}", file=sys.stderr)
    if len(bad) > FAILED_SHOWN:
        print(f"  ... and {len(bad) - FAILED_SHOWN} more", file=sys.stderr)
    return 3


def _print_run(record: Any) -> None:
    c, info = record.config, record.task_info
    clip = "".join(f", {k} {getattr(c, k):g}" for k in ("clip_norm", "clip_value")
                   if getattr(c, k) is not None)
    print(f"{c.optimizer} on {c.task} (seed {c.seed}, batch {c.batch_size}, "
          f"{c.schedule} schedule{clip}): {record.status}"
          + (f" - {record.error}" if record.error else ""))
    print(f"  hyperparameters: {json.dumps(dict(c.hyperparams), default=str)}")
    print(f"  {record.steps_done} steps ({record.grad_evals} gradient evaluations) in "
          f"{record.train_seconds:.2f} s of training ({record.wall_seconds:.2f} s wall)")
    for k, v in record.final.items():
        print(f"  final {k:<20} {v:.6g}")
    target = f"{info.target_metric} <= {info.target:g}"
    if record.reached and record.steps_to_target is not None:
        when = ("" if record.time_to_target is None
                else f", {record.time_to_target:.3f} s")
        print(f"  reached {target}, settled from step {record.steps_to_target} "
              f"({record.grad_evals_to_target} gradient evaluations{when})")
    else:
        crossed = ("" if record.first_crossing is None
                   else f" (crossed it at step {record.first_crossing} but did not stay)")
        print(f"  did not settle at {target}{crossed}")
    if record.generalization_gap is not None:
        print(f"  generalization gap (test - train loss): {record.generalization_gap:.4g}")
    print(f"  optimizer state: {record.state_bytes} bytes for {record.n_params} "
          f"parameters; store key {record.key}")


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from .lab.lrfind import find_lr, write_lr_find_report

    hyper = _pairs(args.hp, "--hp")
    hyper.pop("lr", None)
    result = find_lr(args.task, args.optimizer, task_options=_pairs(args.task_option,
                                                                   "--task-option"),
                     hyperparams=hyper, batch_size=args.batch_size, seed=args.seed,
                     start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.steps,
                     rule=args.rule, allow_import=_allow_import(args))
    out = Path(args.out) if args.out else (
        Path("optimlab-results") / _safe_dirname(f"lr-find-{args.task}-{args.optimizer}"))
    meta = {"task": args.task, "optimizer": args.optimizer, "hyperparams": hyper,
            "batch_size": args.batch_size, "seed": args.seed}
    plot = write_lr_find_report(result, out, f"lr-find: {args.optimizer} on {args.task}",
                                meta=meta)
    print(f"{args.optimizer} on {args.task}: {result.summary()}")
    print(f"plot: {plot}")
    if result.suggestion is not None:
        print(f"try: optimlab run --task {args.task} --optimizer {args.optimizer} "
              f"--lr {result.suggestion:.3g}")
    return 0


def _cmd_landscape(args: argparse.Namespace) -> int:
    from .lab.landscapes import landscapes
    from .lab.spec import StudySpec
    from .lab.study import plan

    hyper = _pairs(args.hp, "--hp")
    if args.lr is not None:
        hyper["lr"] = args.lr
    optimizers = _csv(args.optimizers)
    spec = StudySpec.from_mapping({
        "tasks": [args.task], "optimizers": optimizers, "seeds": [args.seed],
        "batch_size": args.batch_size, **_budget_and_clip(args),
        "hyperparams": {o: hyper for o in optimizers} if hyper else {},
        "task": {args.task: {"options": _pairs(args.task_option, "--task-option")}},
    }, source="optimlab landscape", allow_import=_allow_import(args))
    configs = [run.config for run in plan(spec)]
    out = Path(args.out) if args.out else (
        Path("optimlab-results") / _safe_dirname(f"landscape-{args.task}"))
    landscapes(configs, out, resolution=args.resolution, span=args.span, seed=args.seed,
               progress=lambda msg: print(msg, file=sys.stderr))
    print(f"landscapes: {out / 'index.html'}")
    return 0


def _trial_progress(what: str) -> tuple[Any, Callable[[int, int, Any], None]]:
    from .lab.progress import Progress
    state: dict[str, Any] = {}

    def progress(done: int, total: int, trial: Any) -> None:
        if "bar" not in state:
            state["bar"] = Progress(total, what, start=done)
            if done:
                state["bar"].message(f"resuming: {done} of {total} {what} already stored")
        if trial is not None:
            value = trial.get("value")
            shown = "-" if value is None else f"{value:.4g}"
            state["bar"].update(done, f"{trial['optimizer']} on {trial['task']} trial "
                                      f"{trial.get('index')}: {trial['status']} {shown}")
    return state, progress


def _rerun_progress() -> Callable[[int, int, Any], None]:
    from .lab.progress import Progress
    state: dict[str, Any] = {}

    def progress(done: int, total: int, record: Any) -> None:
        if "bar" not in state:
            state["bar"] = Progress(total, "re-runs", start=done - 1)
        state["bar"].update(done, f"{record.label} on {record.task} seed {record.seed}: "
                                  f"{record.status}")
    return progress


def _cmd_tune(args: argparse.Namespace) -> int:
    from .lab.tune import TuneSpec, tune

    if args.schedules is not None and not _csv(args.schedules):
        raise CLIError(f"--schedules {args.schedules!r} is empty; give at least one schedule "
                       "name", "optimlab list schedules")
    spec = TuneSpec(tasks=args.tasks, optimizers=args.optimizers, trials=args.trials,
                    steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                    seeds=args.seeds, space=args.space, pruner=args.pruner, name=args.name,
                    schedules=tuple(_csv(args.schedules) or ()), clip_norm=args.clip_norm,
                    clip_value=args.clip_value, allow_import=_allow_import(args))
    _, progress = _trial_progress("trials")
    executor = _executor(args)
    try:
        outcome = tune(spec, args.store, storage=args.storage, workers=args.workers,
                       progress=progress, rerun_progress=_rerun_progress(),
                       message=lambda text: print(text, file=sys.stderr), executor=executor)
    finally:
        if executor is not None:
            executor.close()
    print(f"tuning {outcome.name!r}: best configuration per task and optimizer")
    for r in outcome.results:
        value = "-" if r.best_value is None else f"{r.best_value:.4g}"
        print(f"  {r.task:<22} {r.optimizer:<10} {r.objective or '':<14} {value:<11} "
              f"{json.dumps(r.best_hyperparams)}  ({r.complete} complete, {r.pruned} pruned, "
              f"{r.failed} failed)")
    failed = sum(r.failed for r in outcome.results)
    counted = sum(r.complete + r.pruned + r.failed for r in outcome.results)
    if failed:
        print(f"optimlab: {failed} of {counted} trials failed; each is stored as a failed "
              "Optuna trial with its error (user attribute 'error'); a rerun does not repeat "
              "them", file=sys.stderr)
    status = 3 if failed else 0
    if outcome.rerun is None:
        return status
    with _store(args.store) as store:
        records = store.study_records(outcome.rerun.name)
        if not args.no_report:
            out = Path(args.out) if args.out else None
            index = _write_report(store, outcome.rerun.name, out, storage=args.storage)
            print(f"\nreport: {index}")
    return max(status, _status_of_runs(records, "re-runs"))


def _cmd_advise(args: argparse.Namespace) -> int:
    from .lab import advise as adv

    if args.distill is not None:
        from .lab.environment import environment

        with _store(args.store) as store:
            records = store.study_records(args.distill)
            spec = store.study_spec(args.distill)
        env = environment()
        conditions = (f"{len(records)} runs of study {args.distill!r} ranked by "
                      f"{spec.get('rank_by', 'work')} to target; "
                      + ", ".join(f"{k} {v}" for k, v in env.items() if isinstance(v, str)))
        evidence = adv.distill(records, study=args.distill, source=f"optimlab {__version__}",
                               conditions=conditions, rank_by=spec.get("rank_by", "work"))
        if args.evidence_out:
            path = adv.write_evidence(evidence, args.evidence_out)
            print(f"evidence of study {args.distill!r} ({len(records)} runs): {path}")
        else:
            print(json.dumps(evidence, indent=1, sort_keys=True))
        return 0
    if args.no_compute:
        with _store(args.store) as store:
            evidence = adv.load_evidence(store)
        print("Rules distilled from recorded results (each with its evidence):\n")
        for rule in adv.rules(evidence):
            print(f"- {rule.text}\n    evidence: {rule.evidence}")
        return 0
    if args.task is None:
        raise CLIError("advise needs --task (or --no-compute for rules from recorded results)")
    from .lab.progress import Progress

    say = Progress(1, "").message
    _, progress = _trial_progress("trials")
    advice = adv.advise(args.task, optimizers=_csv(args.optimizers),
                        budget_minutes=args.budget, store=args.store, workers=args.workers,
                        batch_size=args.batch_size, seeds=args.seeds, steps=args.steps,
                        task_options=_pairs(args.task_option, "--task-option"),
                        space=args.space, clip_norm=args.clip_norm, progress=progress,
                        rerun_progress=_rerun_progress(), message=say,
                        allow_import=_allow_import(args))
    out = Path(args.out) if args.out else (
        Path("optimlab-results") / _safe_dirname(f"advise-{args.task}"))
    index = adv.write_advice_report(advice, args.store, out,
                                    progress=lambda m: say(f"report: {m}"))
    print(adv.advice_text(advice))
    print(f"\nreport: {index}")
    return 0


def _default_spec() -> Any:
    from .lab.spec import DEFAULT_STUDY, StudySpec
    return StudySpec.load(DEFAULT_STUDY)


def _compare_overrides(args: argparse.Namespace, base: Any) -> dict[str, Any]:
    """The study settings the command line gives (only those given), on top of ``base``."""
    out: dict[str, Any] = {}
    for key in ("tasks", "optimizers", "batch_size", "schedule"):
        if getattr(args, key) is not None:
            out[key] = _csv(getattr(args, key))
    for key in ("seeds", "eval_every", "lr_scaling", "base_batch_size", "rank_by",
                "heldout_seeds"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    out.update(_budget_and_clip(args))
    if args.telemetry:
        out["telemetry"] = True
    if args.sharpness:
        out["sharpness"] = True
    lrs = _floats(args.lr, "--lr")
    if lrs is not None:
        optimizers = out.get("optimizers") or list(base.optimizers)
        out["hyperparams"] = {o: {"lr": lrs} for o in optimizers}
    if args.name:
        out["name"] = args.name
    return out


def _cmd_compare(args: argparse.Namespace) -> int:
    if args.study is not None:
        from .lab.spec import StudySpec, study_path
        spec = StudySpec.load(study_path(args.study), allow_import=_allow_import(args))
    else:
        spec = _default_spec()
    overrides = _compare_overrides(args, spec)
    if set(overrides) - {"name"}:
        spec = spec.merged_with(overrides, source="optimlab compare",
                                allow_import=_allow_import(args))
    elif "name" in overrides:
        from dataclasses import replace
        spec = replace(spec, name=overrides["name"])
    with _store(args.store) as store:
        executor = _executor(args)
        try:
            outcome = _execute_study(spec, store, args.workers, replace=args.replace,
                                     population=args.population, executor=executor)
        finally:
            if executor is not None:
                executor.close()
        records = store.study_records(outcome.name)
        if args.no_report:
            print(f"study {outcome.name!r}: {outcome.planned} runs stored in {store.url}")
            return _status_of_runs(records)
        out = Path(args.out) if args.out else None
        index = _write_report(store, outcome.name, out)
    print(f"\nreport: {index}\nresults: {store.url} (study {outcome.name!r}; "
          f"re-running this command resumes it)")
    return _status_of_runs(records)


def _cmd_worker(args: argparse.Namespace) -> int:
    from .lab.progress import Progress
    from .lab.worker import run_worker

    bar = Progress(0, "runs")

    def progress(count: int, total: int, record: Any) -> None:
        bar.total = total
        bar.update(count, f"{record.label} on {record.task} seed {record.seed}: "
                          f"{record.status}")

    from .lab.store import StoreError

    with _store(args.store) as store:
        try:
            store.study_spec(args.study)
        except StoreError as e:
            raise CLIError(str(e), "a study is saved by optimlab compare --store URL (which "
                           "also works on it); start the workers after it") from None
        executor = _executor(args)
        if executor is None and args.workers is not None:
            from .lab.study import InlineExecutor, ProcessExecutor
            executor = InlineExecutor() if args.workers == 1 else ProcessExecutor(args.workers)
        try:
            bar.message(f"worker on study {args.study!r} in {store.url}")
            outcome = run_worker(store, args.study, executor=executor, progress=progress,
                                 message=bar.message, lease_s=args.lease,
                                 population=args.population,
                                 allow_import=_allow_import(args))
        finally:
            if executor is not None:
                executor.close()
        records = store.study_records(outcome.name)
    print(f"study {outcome.name!r}: all {outcome.planned} runs stored; this worker ran "
          f"{outcome.executed}, other workers {outcome.elsewhere}, {outcome.skipped} were "
          "stored before")
    return _status_of_runs(records)


def _cmd_report(args: argparse.Namespace) -> int:
    with _store(args.store) as store:
        if args.study is None:
            studies = store.studies()
            if not studies:
                print(f"no studies in {store.url} yet; run optimlab compare")
                return 0
            print(f"studies in {store.url}:")
            for s in studies:
                print(f"  {s['name']:<30} {s['finished']}/{s['runs']} runs finished")
            print("write one's report with: optimlab report --study NAME")
            return 0
        index = _write_report(store, args.study, Path(args.out) if args.out else None,
                              storage=args.storage)
    print(f"\nreport: {index}")
    return 0


# --------------------------------------------------------------------------- the parser


class _Parser(argparse.ArgumentParser):
    """argparse in the CLI's error style: one error line, a hint, exit status 2.

    Subcommand parsers are made of the same class, so every command answers alike.
    """

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str) -> NoReturn:
    _error(message, _help_hint(prog))
    sys.exit(2)


def _help_hint(prog: str) -> str:
    what = "the commands" if prog == "optimlab" else "the options"
    return f"run '{prog} --help' for {what}"


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="optimlab", formatter_class=raw, epilog=EXAMPLES["main"],
        description="optimlab: composable torch.optim optimizers and a lab that compares them "
                    "by measurement.")
    parser.add_argument("--version", action="version", version=f"optimlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list tasks, optimizers, transforms and schedules",
                       description="List what optimlab provides.", epilog=EXAMPLES["list"],
                       formatter_class=raw)
    p.add_argument("what", nargs="?", default="all",
                   choices=("all", "tasks", "optimizers", "transforms", "schedules"))
    p.set_defaults(func=_cmd_list)

    def run_args(p: argparse.ArgumentParser, *, hp: bool = False,
                 task_option: bool = True) -> None:
        """The options shared by the commands that build runs."""
        if hp:
            p.add_argument("--hp", action="append", metavar="KEY=VALUE",
                           help="another hyperparameter, e.g. --hp momentum=0.9 "
                                "--hp betas=0.9,0.99")
        if task_option:
            p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                           help="a task option, e.g. --task-option depth=3")
        p.add_argument("--batch-size", default=32, help="'full', 1 or k (default 32)")

    def budget_args(p: argparse.ArgumentParser) -> None:
        """The budget and gradient clipping (run, compare)."""
        g = p.add_argument_group("budget (at most one of --steps, --examples, --epochs)")
        g.add_argument("--steps", type=int, default=None, help="steps per run (task default)")
        g.add_argument("--examples", type=int, default=None,
                       help="training examples per run (steps = examples / batch size)")
        g.add_argument("--epochs", type=float, default=None,
                       help="passes over the training set per run")
        g.add_argument("--seconds", type=float, default=None,
                       help="wall-clock budget per run (machine-dependent)")
        clip_args(p)

    def clip_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--clip", "--clip-norm", dest="clip_norm", type=float, default=None,
                       metavar="MAX_NORM", help="clip the global gradient norm before each "
                       "step (any optimizer; recorded in the run key)")
        p.add_argument("--clip-value", type=float, default=None, metavar="V",
                       help="clip each gradient element to [-V, V]")

    def allow_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-import", action="append", metavar="PKG",
                       help="allow tasks and optimizers named by import path "
                            "('PKG.module:attr') from this top-level package (repeatable or "
                            "comma-separated; also $OPTIMLAB_ALLOW_IMPORT); nothing else is "
                            "imported")

    def store_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", metavar="URL", default=None,
                       help="results database (default sqlite:///optimlab-results/results.db;"
                            " postgresql://user:password@host/db for several machines)")

    def executor_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="where runs execute: local processes (default) or Ray tasks")
        p.add_argument("--address", metavar="ADDR", default=None,
                       help="the Ray cluster (ray://HOST:10001, HOST:6379 or auto; default: a "
                            "local Ray instance)")

    p = sub.add_parser("run", help="train one task with one optimizer and print the result",
                       description="Run one task with one optimizer configuration and seed; "
                                   "the run is stored like a study's.",
                       epilog=EXAMPLES["run"], formatter_class=raw)
    p.add_argument("--task", required=True, help="task name (optimlab list tasks)")
    p.add_argument("--optimizer", required=True, help="optimizer name (optimlab list)")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    run_args(p, hp=True)
    p.add_argument("--schedule", default="constant", help="learning-rate schedule")
    p.add_argument("--seed", type=int, default=0)
    budget_args(p)
    p.add_argument("--telemetry", action="store_true", help="record gradient telemetry")
    p.add_argument("--sharpness", action="store_true",
                   help="measure the final sharpness (top Hessian eigenvalue, trace)")
    p.add_argument("--name", default=None, help="study name to store the run under")
    p.add_argument("--replace", action="store_true",
                   help="replace a study of that name saved with other settings (its runs "
                        "stay stored)")
    p.add_argument("--out", default=None, help="also write a report to this folder")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    store_arg(p)
    allow_arg(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compare", help="compare optimizers on tasks and write a report",
                       description="Run a study (optimizers x tasks x seeds x settings) in "
                                   "parallel, store every run, and write an HTML report "
                                   "ranking the arms by work to target (see 'ranking' "
                                   "below). With no options: the default comparison; "
                                   "options change the default study or --study FILE.",
                       epilog=EXAMPLES["compare"], formatter_class=raw)
    p.add_argument("--study", metavar="FILE.toml",
                   help="a study file (see the README), or a packaged study by name "
                        "(default, sharpness); other options change its settings")
    p.add_argument("--tasks", help="comma-separated task names")
    p.add_argument("--optimizers", help="comma-separated optimizer names")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3)")
    p.add_argument("--batch-size", help="comma-separated: full, 1, k (a list sweeps)")
    p.add_argument("--lr", help="comma-separated learning rates for every optimizer (sweeps)")
    p.add_argument("--schedule", help="comma-separated schedule names (a list sweeps)")
    budget_args(p)
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations (default: an adaptive grid)")
    p.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"), default=None,
                   help="scale the lr with the batch size: lr * (bs / base) ** p, p = 1 "
                        "(linear) or 1/2 (sqrt)")
    p.add_argument("--base-batch-size", type=int, default=None,
                   help="the batch size the given lr refers to (default 32)")
    p.add_argument("--rank-by", choices=("work", "time"), default=None,
                   help="rank by work to target (default) or by wall-clock time to target")
    p.add_argument("--heldout-seeds", type=int, default=None,
                   help="fresh seeds for re-running each optimizer's best swept arm "
                        "(default: as many as --seeds when a hyperparameter is swept; 0: off)")
    p.add_argument("--telemetry", action="store_true", help="record gradient telemetry")
    p.add_argument("--sharpness", action="store_true",
                   help="measure the final sharpness (top Hessian eigenvalue, trace)")
    p.add_argument("--name", help="study name (default: derived from the settings)")
    p.add_argument("--replace", action="store_true",
                   help="replace a study of that name saved with other settings (its runs "
                        "stay stored; without it, such a name is refused)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: one per core)")
    p.add_argument("--population", choices=("auto", "off"), default="auto",
                   help="auto: an arm's seeds train together as one batched population "
                        "(same records, faster); off: every run alone (default auto)")
    p.add_argument("--out", help="report folder (default optimlab-results/STUDY/)")
    p.add_argument("--no-report", action="store_true", help="only run and store")
    store_arg(p)
    executor_args(p)
    p.set_defaults(func=_cmd_compare)
    allow_arg(p)

    p = sub.add_parser("lr-find", help="learning-rate range test on a task",
                       description="The learning-rate range test (Smith, 2017): train briefly "
                                   "with an exponentially growing learning rate and suggest one.",
                       epilog=EXAMPLES["lr-find"], formatter_class=raw)
    p.add_argument("--task", required=True, help="task name (optimlab list tasks)")
    p.add_argument("--optimizer", default="sgd", help="optimizer name (default sgd)")
    run_args(p, hp=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100, help="steps of the test (default 100)")
    p.add_argument("--rule", default="valley", help="valley, steepest or min_loss_div10")
    p.add_argument("--out", help="folder for lr_find.png and lr_find.json")
    allow_arg(p)
    p.set_defaults(func=_cmd_lr_find)

    p = sub.add_parser("landscape", help="loss landscapes of trained runs (plots and data)",
                       description="Train a task with each optimizer from the same seed and "
                                   "draw the loss landscape around and between the solutions.",
                       epilog=EXAMPLES["landscape"], formatter_class=raw)
    p.add_argument("--task", required=True, help="task name (optimlab list tasks)")
    p.add_argument("--optimizers", required=True, help="comma-separated optimizer names")
    p.add_argument("--lr", type=float, default=None, help="learning rate (every optimizer)")
    run_args(p, hp=True)
    p.add_argument("--seed", type=int, default=0)
    budget_args(p)
    p.add_argument("--resolution", type=int, default=21,
                   help="points per axis of the 2-D slices (default 21)")
    p.add_argument("--span", type=float, default=1.0,
                   help="the slices cover [-span, span] along each direction (default 1)")
    p.add_argument("--out", help="output folder (default optimlab-results/landscape-TASK/)")
    allow_arg(p)
    p.set_defaults(func=_cmd_landscape)

    p = sub.add_parser("tune", help="tune optimizers on tasks with an equal budget (Optuna)",
                       description="Tune each optimizer's hyperparameters on each task with "
                                   "Optuna: the same number of trials for every optimizer, "
                                   "hopeless trials pruned, the best configurations re-run "
                                   "on several seeds and reported.",
                       epilog=EXAMPLES["tune"], formatter_class=raw)
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--optimizers", required=True, help="comma-separated optimizer names")
    p.add_argument("--trials", type=int, default=20,
                   help="trials per optimizer (default 20, at least 8)")
    p.add_argument("--steps", type=int, default=None, help="steps per trial (task default)")
    run_args(p, task_option=False)
    clip_args(p)
    p.add_argument("--space", default="lr", choices=("lr", "full"),
                   help="lr: the learning rate only; full: every documented hyperparameter")
    p.add_argument("--schedules", help="comma-separated schedules to search over")
    p.add_argument("--pruner", default="median", choices=("median", "none"))
    p.add_argument("--seed", type=int, default=0, help="sampler seed (reproducible trials)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the best re-runs (3)")
    p.add_argument("--name", help="tuning name (default: derived from the settings)")
    p.add_argument("--workers", type=int, default=None, help="parallel studies")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: --store)")
    p.add_argument("--out", help="report folder")
    p.add_argument("--no-report", action="store_true", help="only tune and store")
    store_arg(p)
    executor_args(p)
    allow_arg(p)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("worker", help="work on a stored study until all its runs are stored",
                       description="Take the pending runs of a study saved in --store (by "
                                   "optimlab compare) one claim at a time and store their "
                                   "records, until none is left. Start any number of workers "
                                   "on any machines that reach the store (PostgreSQL); a "
                                   "killed worker's runs are taken over when its lease ends.",
                       epilog=EXAMPLES["worker"], formatter_class=raw)
    p.add_argument("--study", required=True, help="the study's name in the store")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel processes of this worker (default: one per core)")
    p.add_argument("--population", choices=("auto", "off"), default="auto",
                   help="auto: an arm's seeds train together as one population (default)")
    p.add_argument("--lease", type=float, default=60.0, metavar="SECONDS",
                   help="how long a claim outlives a worker that stopped renewing it (60)")
    store_arg(p)
    executor_args(p)
    allow_arg(p)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("advise", help="which optimizer for this task? (measured, with evidence)",
                       description="Run an equal-budget tuning study of candidate optimizers on "
                                   "a task and rank them with evidence; --no-compute gives "
                                   "rules from recorded results instead.",
                       epilog=EXAMPLES["advise"], formatter_class=raw)
    p.add_argument("--task", help="task name (built-in or 'package.module:factory')")
    p.add_argument("--budget", type=float, default=5.0,
                   help="minutes (default 5); raised, with a warning, when too small for 8 "
                        "trials per optimizer")
    p.add_argument("--optimizers", help="candidates (default: the seven classics)")
    run_args(p)
    p.add_argument("--steps", type=int, default=None, help="steps per run (task default)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the final re-runs (3)")
    p.add_argument("--space", default="lr", choices=("lr", "full"))
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", help="report folder (default optimlab-results/advise-TASK/)")
    clip_args(p)
    p.add_argument("--no-compute", action="store_true",
                   help="no runs: rules distilled from the recorded results, with evidence")
    p.add_argument("--distill", metavar="STUDY",
                   help="no runs: print (or write, --evidence-out) the evidence of a stored "
                        "study, the form of the packaged evidence")
    p.add_argument("--evidence-out", metavar="FILE.json", help="where --distill writes")
    store_arg(p)
    allow_arg(p)
    p.set_defaults(func=_cmd_advise)

    p = sub.add_parser("report", help="write the report of a stored study",
                       description="Write the HTML report, summary.md and results.csv/json of "
                                   "a study in the store; with no --study, list the studies.",
                       epilog=EXAMPLES["report"], formatter_class=raw)
    p.add_argument("--study", help="study name")
    p.add_argument("--out", help="report folder (default optimlab-results/STUDY/)")
    p.add_argument("--storage", metavar="URL",
                   help="the Optuna storage a tuning used, when it was not --store (a URL "
                        "recorded in the database is never followed)")
    store_arg(p)
    p.set_defaults(func=_cmd_report)
    return parser


def _hint_for(args: argparse.Namespace) -> str:
    cmd = getattr(args, "command", None)
    return _help_hint(f"optimlab {cmd}" if cmd else "optimlab")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optimlab`` console script; returns the exit status."""
    from ._interrupts import interrupt_on_signals

    with interrupt_on_signals():  # SIGTERM and SIGHUP stop a command as Ctrl-C does
        try:
            return _main(argv)
        except KeyboardInterrupt as e:  # before the command ran, or while reporting an error
            return _interrupted(e)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args, unknown = _parser().parse_known_args(argv)
        if unknown:  # named after the command they were given to, not the top-level parser
            prog = f"optimlab {args.command}" if args.command else "optimlab"
            _usage_error(prog, f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # --help, --version, or a usage error, already printed
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        print(_list())
        return 0
    return _run_command(args)


#: Commands that execute runs (a fault in them leaves the finished runs stored).
RUNNING_COMMANDS = ("run", "compare", "tune", "advise", "worker")


def _run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; every failure is one line (and a hint) and an exit status."""
    import concurrent.futures as cf

    from .lab.pool import WorkerDied
    from .lab.store import StoreError
    from .lab.study import StudyError

    func: Callable[[argparse.Namespace], int] = args.func
    resume = "the runs that finished are stored: run the same command again to resume"
    running = args.command in RUNNING_COMMANDS
    try:
        if getattr(args, "workers", None) is not None and args.workers < 1:
            raise CLIError(f"--workers must be >= 1, got {args.workers}")
        return func(args)
    except CLIError as e:
        _error(str(e), e.hint or _hint_for(args))
    except StoreError as e:
        _error(str(e), f"{resume} once the store is usable" if running else _hint_for(args))
    except (StudyError, ValueError, TypeError) as e:
        _error(str(e), _hint_for(args))
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except (WorkerDied, cf.BrokenExecutor) as e:  # a worker lost outside any one run
        _error(f"a worker process was lost: {e}", resume)
        return 1
    except Exception as e:
        if _is_database_error(e):  # the tuning storage (SQLAlchemy) or SQLite itself
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            _error(f"the database failed: {type(e).__name__}: {first[:300]}",
                   f"{resume} once the database is usable" if running else _hint_for(args))
            return 2
        if os.environ.get("OPTIMLAB_DEBUG"):  # a bug of ours: one line, the traceback on request
            raise
        _error(f"internal error: {type(e).__name__}: {e}",
               "set OPTIMLAB_DEBUG=1 to see the traceback, and please report it")
        return 1
    return 2


def _interrupted(error: KeyboardInterrupt) -> int:
    """Say how to resume after Ctrl-C or a termination signal; the exit status (130 for
    SIGINT, 143 for SIGTERM, 129 for SIGHUP)."""
    from ._interrupts import Interrupted, exit_status, signal_name

    how = (f"by {signal_name(error.signum)}" if isinstance(error, Interrupted)
           else "(Ctrl-C)")
    print(f"\noptimlab: interrupted {how}; the runs that finished are stored: run the same "
          "command again to resume", file=sys.stderr)
    return exit_status(error)


def _is_database_error(error: BaseException) -> bool:
    """Whether ``error`` comes from a database driver: SQLite, or SQLAlchemy (under Optuna's
    storage), by its class's package, so that neither is imported here."""
    import sqlite3
    if isinstance(error, sqlite3.Error):
        return True
    return any(cls.__module__.split(".")[0] == "sqlalchemy" for cls in type(error).__mro__)


def _error(message: str, hint: str) -> None:
    message = " ".join(message.split())
    print(f"optimlab: error: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
