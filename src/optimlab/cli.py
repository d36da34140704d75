"""The ``optimlab`` command line.

Until the lab lands, ``optimlab`` lists what the toolkit provides; ``optimlab compare`` says
plainly that the comparison lab is not in this version yet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import OPTIMIZERS, __version__, transforms
from .lab.tasks import TASKS


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    first = doc.splitlines()[0] if doc else ""
    return first.split(". ")[0].rstrip(".").replace("``", "")


def _list() -> str:
    lines = ["Optimizers (drop-in torch.optim classes):"]
    for name, cls in OPTIMIZERS.items():
        lines.append(f"  {name:<10} optimlab.{cls.__name__:<9} {_first_line(cls)}")
    lines.append("")
    lines.append("Transforms (compose with optimlab.chain):")
    for name in transforms.__all__:
        obj = getattr(transforms, name)
        if callable(obj) and name[0].islower() and name != "check_range":
            lines.append(f"  {name:<28} {_first_line(obj)}")
    if TASKS:
        lines.append("")
        lines.append("Tasks (the lab; user tasks as 'package.module:factory'):")
        for name, factory in sorted(TASKS.items()):
            info = factory().info
            lines.append(f"  {name:<28} [{info.kind}] {info.description}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``optimlab`` console script."""
    parser = argparse.ArgumentParser(
        prog="optimlab",
        description="optimlab: composable torch.optim optimizers and an optimizer lab.",
        epilog="examples:\n  optimlab list\n  optimlab compare",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"optimlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("list", help="list optimizers and transforms",
                   description="List the optimizers and transforms optimlab provides.")
    sub.add_parser("compare", help="compare optimizers on tasks (the lab; not in this version)",
                   description="Compare optimizers on built-in tasks and write a report.")
    args = parser.parse_args(argv)
    if args.command == "compare":
        print("optimlab compare: the comparison lab (tasks, studies, report) is not part of "
              f"optimlab {__version__} yet. What this version provides:\n")
        print(_list())
        return 0
    print(_list())
    return 0


if __name__ == "__main__":
    sys.exit(main())
