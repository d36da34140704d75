#!/usr/bin/env bash
# The GPU measurements of benchmarks/results/<prefix>-*: one script, so that a single session
# on a lent GPU machine produces every number (with hardware and versions) in one go.
# Usage: OUT=dir bash benchmarks/run_gpu.sh [prefix]     (run from the repository root)
# Each part has its own time limit; a part that runs out still leaves its partial JSON.
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
{
  date; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
    --format=csv
  "$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$out/$prefix-env.txt" 2>&1
cat "$out/$prefix-env.txt"
# AdamW: 1.0B parameters in 45 tensors, every implementation, plus bf16 states.
bench adamw-1b 150 --params 1e9 --tensors 45 --optimizers adamw --bf16-states --repeat 40
# AdamW: 100M parameters in 72 tensors.
bench adamw-100m 90 --params 1e8 --tensors 72 --optimizers adamw --repeat 50
# The CUDA tests: compiled == eager on the GPU, no host synchronization in a compiled step.
echo "=== pytest (CUDA) ==="
timeout 120 "$py" -m pytest -q -p no:cacheprovider -n 8 tests/test_cuda.py \
  tests/test_state_dtype.py tests/test_properties.py -k "cuda or test_compiled_step" \
  > "$out/$prefix-pytest.txt" 2>&1
echo "rc=$? after $SECONDS s"; tail -n 5 "$out/$prefix-pytest.txt"
# Every other optimizer at 1.0B / 45 tensors (torch.compile of torch.optim left out: time).
bench others-1b 200 --params 1e9 --tensors 45 --repeat 30 \
  --optimizers sgd,adagrad,rmsprop,adam,nadam,radam,adadelta,adamax \
  --impls "optimlab,optimlab fused,torch foreach,torch fused"
