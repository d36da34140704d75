#!/usr/bin/env bash
# The GPU measurements of benchmarks/results/<prefix>-*: one script, so that a session on a lent
# GPU machine produces every number (with hardware and versions) in one go.
# Usage (from the repository root):
#   OUT=dir bash benchmarks/run_gpu.sh [prefix] [part ...]
# parts: env tests adamw-1b adamw-100m others-1b profile (default: all, about 8 minutes on an
# H100). Each part has its own time limit; a benchmark that runs out leaves its partial JSON.
set -uo pipefail
prefix=${1:-h100}
shift || true
parts=${*:-env tests adamw-1b adamw-100m others-1b profile}
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
for part in $parts; do
  case $part in
    env)
      { date; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
          --format=csv
        "$py" -c "import torch, triton; print('torch', torch.__version__, 'cuda',
        torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
      } > "$out/$prefix-env.txt" 2>&1
      cat "$out/$prefix-env.txt" ;;
    tests)  # compiled == eager on the GPU, no host synchronization, CUDA-graph replays
      echo "=== pytest (CUDA) ==="
      timeout 120 "$py" -m pytest -q -p no:cacheprovider -n 8 tests/test_cuda.py \
        tests/test_state_dtype.py tests/test_properties.py -k "cuda or test_compiled_step" \
        > "$out/$prefix-pytest.txt" 2>&1
      echo "rc=$? after $SECONDS s"; tail -n 5 "$out/$prefix-pytest.txt" ;;
    adamw-1b)  # 1.0B parameters in 45 tensors, every implementation, plus bf16 states
      bench adamw-1b 150 --params 1e9 --tensors 45 --optimizers adamw --bf16-states \
        --repeat 40 ;;
    adamw-100m)  # 100M parameters in 72 tensors
      bench adamw-100m 90 --params 1e8 --tensors 72 --optimizers adamw --repeat 50 ;;
    others-1b)  # every other optimizer at 1.0B (torch.compile of torch.optim left out: time)
      bench others-1b 200 --params 1e9 --tensors 45 --repeat 30 \
        --optimizers sgd,adagrad,rmsprop,adam,nadam,radam,adadelta,adamax \
        --impls "optimlab,optimlab fused,torch foreach,torch fused" ;;
    nadam-1b)
      bench nadam-1b 60 --params 1e9 --tensors 45 --optimizers nadam --repeat 30 \
        --impls "optimlab fused,torch foreach" ;;
    profile)  # where the host time of a steady-state fused step goes (100M / 72 tensors)
      echo "=== host profile ==="
      timeout 60 "$py" benchmarks/step_profile.py > "$out/$prefix-profile.txt" 2>&1
      echo "rc=$? after $SECONDS s"; head -n 30 "$out/$prefix-profile.txt" ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
