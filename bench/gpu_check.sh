#!/usr/bin/env bash
# bash bench/gpu_check.sh   (on a lent GPU machine: run(command="bash bench/gpu_check.sh", timeout_s=540))
# One call, under 8 minutes in all (each step has its own limit, and the steps share a 470 s budget):
#   1. the GPU tests (tests/test_gpu.py and the CPU-safe model/step/ablation tests, now on CUDA)
#   2. VRAM estimate vs measured peak, under 12 GB (rtx4070) emulation  -> $OUT/vram_accuracy-*.json
#   3. the ablation at the seed's default config, rtx4070 memory         -> $OUT/ablation/{ablation.json,png,table.txt}
#   4. a short search on the GPU, if Ray and Optuna are installed there  -> $OUT/runs/gpu-smoke/
# Everything is written under $OUT (default bench/results/gpu-check); card.txt names the card.
# Afterwards, copy the JSON/PNG into bench/results/ with the card's name in the file name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-470}
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")
echo "card: $card" | tee "$OUT/card.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/card.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/card.txt" 2>&1
[ "$card" = none ] && { echo "no CUDA device: nothing to check"; exit 1; }

SECONDS=0
step() {  # step NAME LIMIT CMD...: its own limit (cut to what is left of BUDGET_S); a failure does not stop the rest
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET_S - SECONDS))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then echo "=== $name skipped: budget spent" | tee "$OUT/$name.log"; return; fi
  echo "=== $name (limit ${limit}s, ${SECONDS}s so far)"
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $? after ${SECONDS}s total" | tee -a "$OUT/$name.log"
  tail -n 30 "$OUT/$name.log"
}
step gpu_tests 80 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_model.py tests/test_train_step.py \
  tests/test_ablate.py
step vram_accuracy 120 $PY bench/vram_accuracy.py --quick --emulate-gpu rtx4070 --out "$OUT"
step ablation 180 $PY -m asl_ray.ablate --gpu rtx4070 --repeats 2 --steps 6 --out "$OUT/ablation"
if $PY -c "import ray, optuna" 2>/dev/null; then
  step search 90 $PY -m asl_ray.search --space search_spaces/cpu-smoke.yaml --trials 3 --storage-path "$OUT/runs" \
    --name gpu-smoke
else
  echo "ray/optuna not installed on this machine: search step skipped" | tee "$OUT/search.log"
fi
echo "done in ${SECONDS}s; results in $OUT"
