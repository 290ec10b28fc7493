#!/usr/bin/env bash
# bash bench/gpu_check.sh   (on a lent GPU machine: run(command="bash bench/gpu_check.sh", timeout_s=540))
# One call, well under 8 minutes: GPU tests, VRAM estimate vs measured peak under 12 GB (rtx4070) emulation,
# loop throughput, and a short search if Ray is installed there. Everything is written under $OUT
# (default bench/results/gpu-check), named after the card.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")
echo "card: $card" | tee "$OUT/card.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/card.txt" 2>&1
[ "$card" = none ] && { echo "no CUDA device: nothing to check"; exit 1; }

step() {  # step NAME SECONDS CMD...: each step has its own time limit, and a failure does not stop the rest
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $? after ${SECONDS}s total" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}
SECONDS=0
step gpu_tests 120 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_model.py tests/test_train_step.py
step vram_accuracy 150 $PY bench/vram_accuracy.py --emulate-gpu rtx4070 --out "$OUT"
step loop_throughput 90 $PY bench/loop_throughput.py --out "$OUT" --batches 40 --repeats 3 --set num_workers=4
if $PY -c "import ray, optuna" 2>/dev/null; then
  step search 150 $PY -m asl_ray.search --space search_spaces/cpu-smoke.yaml --trials 3 --storage-path "$OUT/runs" --name gpu-smoke
else
  echo "ray/optuna not installed on this machine: search step skipped" | tee "$OUT/search.log"
fi
echo "done in ${SECONDS}s; results in $OUT"
