#!/usr/bin/env bash
# bash bench/gpu_check.sh [--dry-run]
#   On a lent GPU machine: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540), after
#   `bash ../shared/tools/device-wheels.sh` here (Ray + Optuna wheels for the search step; see its header).
#   --dry-run (no GPU): checks the wiring of every step (the scripts, their flags, vram_accuracy's grid and
#   kernel selection) and runs nothing on a GPU.
# One call, under 8 minutes in all (each step has its own limit, and the steps share a 470 s budget):
#   1. the GPU tests (tests/test_gpu.py and the CPU-safe model/step/ablation tests, now on CUDA)
#   2. VRAM estimate vs measured peak under 12 GB (rtx4070) emulation, cudnn.benchmark off and on (fp16),
#      each config also capped at its predicted need                   -> $OUT/vram_accuracy-*.json
#   3. the ablation at the seed's default config, rtx4070 memory         -> $OUT/ablation/{ablation.json,png,table.txt}
#   4. a short search on the GPU (Ray and Optuna from .whl/ if present)  -> $OUT/runs/gpu-smoke/
# Everything is written under $OUT (default bench/results/gpu-check); card.txt names the card.
# Afterwards, copy the JSON/PNG into bench/results/ with the card's name in the file name.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = --dry-run ] && DRY=1
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-470}
if [ -d .whl ] && [ "$DRY" = 0 ]; then  # device-wheels.sh's install line: Ray and Optuna for the search step
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl \
    && export PYTHONPATH="$PWD/.site:$PYTHONPATH" || echo "wheels in .whl/ did not install: search step will skip"
fi
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')")
echo "card: $card" | tee "$OUT/card.txt"
if [ "$card" != none ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/card.txt" 2>&1
  # What CUDA can allocate (cards.py's cuda_total_mib) beside nvidia-smi's total above.
  $PY -c "import torch; f, t = torch.cuda.mem_get_info(0); c = torch.cuda.get_device_capability(0);
print(f'cuda total {t / 2**20:.0f} MiB, free {f / 2**20:.0f} MiB, sm_{c[0]}{c[1]}')" >> "$OUT/card.txt" 2>&1
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/card.txt" 2>&1
if [ "$card" = none ] && [ "$DRY" = 0 ]; then echo "no CUDA device: nothing to check (--dry-run checks the wiring)"; exit 1; fi

SECONDS=0
failed=0
step() {  # step NAME LIMIT CMD...: its own limit (cut to what is left of BUDGET_S); a failure does not stop the rest
  local name=$1 limit=$2; shift 2
  if [ "$DRY" = 1 ]; then echo "=== $name (limit ${limit}s): $*"; return; fi
  local left=$((BUDGET_S - SECONDS))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then echo "=== $name skipped: budget spent" | tee "$OUT/$name.log"; return; fi
  echo "=== $name (limit ${limit}s, ${SECONDS}s so far)"
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $? after ${SECONDS}s total" | tee -a "$OUT/$name.log"
  tail -n 30 "$OUT/$name.log"
}
check() {  # dry run only: check "CMD" FLAG...: CMD --help must run and name every flag a step passes it
  [ "$DRY" = 1 ] || return 0
  local cmd=$1; shift
  local help
  help=$($cmd --help 2>&1) || { echo "wiring broken: $cmd --help failed"; failed=1; return; }
  for flag in "$@"; do
    grep -q -- "$flag" <<< "$help" || { echo "wiring broken: $cmd has no $flag"; failed=1; }
  done
}
check "$PY bench/vram_accuracy.py" --quick --emulate-gpu --at-need --out
check "$PY -m asl_ray.ablate" --gpu --repeats --steps --out
check "$PY -m asl_ray.search" --space --trials --storage-path --name
[ -f search_spaces/cpu-smoke.yaml ] || { echo "wiring broken: search_spaces/cpu-smoke.yaml missing"; failed=1; }
[ -f tests/test_gpu.py ] || { echo "wiring broken: tests/test_gpu.py missing"; failed=1; }
if [ "$DRY" = 1 ]; then
  $PY bench/vram_accuracy.py --quick --emulate-gpu rtx4070 --at-need --dry-run --out "$OUT" || failed=1
fi

step gpu_tests 80 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_model.py tests/test_train_step.py \
  tests/test_ablate.py
step vram_accuracy 170 $PY bench/vram_accuracy.py --quick --emulate-gpu rtx4070 --at-need --out "$OUT"
step ablation 130 $PY -m asl_ray.ablate --gpu rtx4070 --repeats 2 --steps 6 --out "$OUT/ablation"
if $PY -c "import ray, optuna" 2>/dev/null; then
  step search 90 $PY -m asl_ray.search --space search_spaces/cpu-smoke.yaml --trials 3 --storage-path "$OUT/runs" \
    --name gpu-smoke
else
  echo "ray/optuna not installed on this machine (run ../shared/tools/device-wheels.sh, carry .whl): search step skipped" \
    | tee "$OUT/search.log"
fi
if [ "$DRY" = 1 ]; then
  (( failed )) && { echo "dry run: wiring broken"; exit 1; }
  echo "dry run: every step wired; nothing ran on a GPU"; exit 0
fi
echo "done in ${SECONDS}s; results in $OUT"
