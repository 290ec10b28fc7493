#!/usr/bin/env bash
# bash bench/gpu_check.sh [--dry-run]
#   On a lent GPU machine, one call: run(command="bash bench/gpu_check.sh", timeout_s=480). No Ray, no Optuna:
#   the lent machine's own python3 and torch (2.11) are enough.
#   --dry-run (CI, no GPU): every step's wiring runs on the CPU; nothing is reported as a GPU figure.
# The steps and their limits come from bench/gpu_check.py (--plan): facts, probe, vram, speed, tests, summary;
# their limits add up to at most 420 s. Each step has its own timeout, and a failed or cut-off step does not stop
# the rest (the vram and speed steps write their JSON after every config). At most 8 files land in $OUT
# (default bench/results/gpu-check): summary.md, facts/probe/vram/speed/tests.json, logs.tar.gz.
# Afterwards: copy them into bench/results/ with the card's name in the file names (gpu_check-<card>-*.json).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=()
[ "${1:-}" = --dry-run ] && DRY=(--dry-run)
OUT=${OUT:-bench/results/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
plan=$($PY bench/gpu_check.py --plan) || { echo "gpu_check.py --plan failed"; exit 1; }
SECONDS=0
failed=0
while read -r name limit; do
  echo "=== $name (limit ${limit}s, ${SECONDS}s so far)"
  if [ "$name" = summary ]; then
    timeout -k 5 "$limit" $PY bench/gpu_check.py summary --out "$OUT" "${DRY[@]}" || failed=1
    continue
  fi
  timeout -k 5 "$limit" $PY bench/gpu_check.py "$name" --out "$OUT" "${DRY[@]}" > "$OUT/$name.log" 2>&1
  rc=$?
  (( rc )) && failed=1
  echo "exit $rc after ${SECONDS}s total"
  tail -n 5 "$OUT/$name.log"
done <<< "$plan"
if [ ${#DRY[@]} -gt 0 ]; then
  (( failed )) && { echo "dry run: wiring broken"; exit 1; }
  echo "dry run: every step wired; nothing ran on a GPU"; exit 0
fi
echo "done in ${SECONDS}s; results in $OUT"
