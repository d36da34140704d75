"""Where the host time of a steady-state ``fused=True`` step goes (cProfile, sorted by own time).

Usage::

    python benchmarks/step_profile.py                         # AdamW, 100M params / 72 tensors
    python benchmarks/step_profile.py --params 1e6 --device cpu
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import step_time as st

import optimlab


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=1e8)
    ap.add_argument("--tensors", type=int, default=72)
    ap.add_argument("--optimizer", default="adamw", choices=tuple(st.SETTINGS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    shape = st.choose_shape(args.params, 4, tensors=args.tensors)
    shapes = shape.shapes()
    params = st.make_params(shapes, torch.float32, device)
    opt = optimlab.OPTIMIZERS[args.optimizer](params, **st.SETTINGS[args.optimizer],
                                              fused=True, nonfinite="ignore")
    for _ in range(6):
        opt.step()
    st.sync(device)
    d = opt._compiled._direct if opt._compiled is not None else None  # private: for the record
    bound = d is not None and d.token is not None
    graph = d is not None and d.graph is not None
    print(f"{args.optimizer}, {shape.numel():,} parameters in {len(shapes)} tensors on {device}; "
          f"direct call bound: {bound}; CUDA graph: {graph}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        opt.step()
    st.sync(device)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
