"""The first ``fused=True`` step: what the compile costs, with a cold and a warm cache.

Each measurement runs in a fresh Python process (imports done before the clock starts), so
that nothing compiled earlier in the process helps it. The first step is timed from the call
to ``step()`` to its return: dynamo's trace, inductor's lowering and C++ (or Triton) build,
and one step. "cold" uses an empty ``TORCHINDUCTOR_CACHE_DIR`` (a new temporary folder per
optimizer); "warm" runs the same again with that folder, now filled (inductor's FX-graph
cache and the built kernels). Every later step of the process is timed too (median), for
scale.

Usage::

    python benchmarks/first_step.py                       # AdamW and SGD, 12M parameters, CPU
    python benchmarks/first_step.py --optimizers adamw --params 1e6 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time
import torch
sys.path.insert(0, {bench!r})
import step_time as st
import optimlab
name, params, device = {name!r}, {params!r}, torch.device({device!r})
shapes = st.choose_shape(params, 4, tensors=51).shapes()
ps = st.make_params(shapes, torch.float32, device)
opt = optimlab.OPTIMIZERS[name](ps, **st.SETTINGS[name], fused=True)
t0 = time.perf_counter()
opt.step()
st.sync(device)
first = time.perf_counter() - t0
later = []
for _ in range(10):
    t0 = time.perf_counter()
    opt.step()
    st.sync(device)
    later.append(time.perf_counter() - t0)
print(json.dumps({{"first_s": first, "step_ms": 1e3 * statistics.median(later)}}))
"""


def first_step(name: str, params: float, device: str, cache: str) -> dict[str, float]:
    """Run one child process with ``cache`` as inductor's cache folder; its measurements."""
    code = CHILD.format(bench=str(Path(__file__).parent), name=name, params=params,
                        device=device)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", default="adamw,sgd")
    ap.add_argument("--params", type=float, default=12e6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=2,
                    help="cold/warm pairs per optimizer (each cold one in a new cache folder)")
    ap.add_argument("--json", default=None, help="also write the measurements here")
    args = ap.parse_args()
    import torch

    import optimlab
    sys.path.insert(0, str(Path(__file__).parent))
    import step_time as st
    numel = st.choose_shape(args.params, 4, tensors=51).numel()
    print(f"optimlab {optimlab.__version__}, torch {torch.__version__}, device {args.device}, "
          f"{numel:,} parameters in 51 tensors, {os.cpu_count()} CPUs; "
          f"{args.rounds} cold/warm pairs, each in fresh processes")
    results: dict[str, dict[str, list[float]]] = {}
    for name in args.optimizers.split(","):
        r: dict[str, list[float]] = {"cold_s": [], "warm_s": [], "step_ms": []}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="inductor-cache-") as cache:
                cold = first_step(name, args.params, args.device, cache)
                warm = first_step(name, args.params, args.device, cache)
            r["cold_s"].append(cold["first_s"])
            r["warm_s"].append(warm["first_s"])
            r["step_ms"] += [cold["step_ms"], warm["step_ms"]]
        results[name] = r
        print(f"  {name:8s} first fused step: cold {statistics.median(r['cold_s']):6.2f} s, "
              f"warm {statistics.median(r['warm_s']):6.2f} s (medians; all: "
              f"{', '.join(f'{c:.2f}/{w:.2f}' for c, w in zip(r['cold_s'], r['warm_s']))}); "
              f"later steps {statistics.median(r['step_ms']):.2f} ms", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
