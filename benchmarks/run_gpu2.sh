#!/usr/bin/env bash
# Second GPU pass (after the CUDA-graph replay and the NAdam host-state fix): the CUDA tests,
# AdamW at 100M/72 and 1.0B/45 tensors, NAdam at 1.0B, and a host-time profile at 100M.
# Usage: OUT=dir bash benchmarks/run_gpu2.sh [prefix]     (run from the repository root)
set -uo pipefail
prefix=${1:-h100}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
bench() {  # name, time limit (s), step_time.py arguments...
  local name=$1 limit=$2; shift 2
  echo "=== $name: step_time.py $* ==="
  timeout "$limit" "$py" benchmarks/step_time.py --device cuda --nonfinite ignore \
    --json "$out/$prefix-$name.json" "$@" > "$out/$prefix-$name.txt" 2>&1
  echo "rc=$? after $SECONDS s"; tail -n 4 "$out/$prefix-$name.txt"
}
echo "=== pytest (CUDA) ==="
timeout 120 "$py" -m pytest -q -p no:cacheprovider -n 8 tests/test_cuda.py \
  tests/test_state_dtype.py tests/test_properties.py -k "cuda or test_compiled_step" \
  > "$out/$prefix-pytest.txt" 2>&1
echo "rc=$? after $SECONDS s"; tail -n 5 "$out/$prefix-pytest.txt"
bench adamw-100m 90 --params 1e8 --tensors 72 --optimizers adamw --repeat 50
bench adamw-1b 150 --params 1e9 --tensors 45 --optimizers adamw --bf16-states --repeat 40
bench nadam-1b 60 --params 1e9 --tensors 45 --optimizers nadam --repeat 30 \
  --impls "optimlab fused,torch foreach"
echo "=== host profile: optimlab fused AdamW, 100M / 72 tensors ==="
timeout 60 "$py" - > "$out/$prefix-profile.txt" 2>&1 <<'PY'
import cProfile, pstats, sys, torch
sys.path.insert(0, "benchmarks")
import step_time as st, optimlab
shapes = st.choose_shape(1e8, 4, tensors=72).shapes()
ps = st.make_params(shapes, torch.float32, torch.device("cuda"))
opt = optimlab.AdamW(ps, lr=1e-3, weight_decay=1e-2, fused=True, nonfinite="ignore")
for _ in range(6):
    opt.step()
torch.cuda.synchronize()
d = opt._compiled._direct
print("direct bound:", d is not None and d.token is not None, "graph:", d is not None and d.graph is not None, "captures:", d.captures if d else None)
pr = cProfile.Profile(); pr.enable()
for _ in range(50):
    opt.step()
torch.cuda.synchronize()
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(15)
PY
echo "rc=$? after $SECONDS s"; head -n 30 "$out/$prefix-profile.txt"
