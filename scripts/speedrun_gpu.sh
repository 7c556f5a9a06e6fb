#!/usr/bin/env bash
# The fixed-budget training protocol (benchmarks/speedrun.py, docs/TRAINING.md) on a lent GPU,
# unattended in one call: each recipe in turn at --budget gpu (8.7e15 FLOPs: cpu-medium at batch
# 256, a quarter of the shipped DiT's training), evaluated on the device, then the paired table
# against the first recipe. With PACK=DIR (PACK=$OUT on a device machine) every run's
# speedrun.json, eval.json and log.csv are copied there as soon as the run ends, and the table too.
#
#   PACK=$OUT TEXT_ENCODER=.gpu/minilm bash scripts/speedrun_gpu.sh baseline masked masked-batch-128
#
# Environment: BUDGET (default gpu), DEVICE (default cuda), PROMPTS (default 200), ROOT (default
# runs/speedrun), THREADS (CPU threads, default 0 = torch's default), TEXT_ENCODER (a local copy of
# the text encoder, made as in docs/TRAINING.md, on machines without its package). A CPU smoke test
# of the script itself (about two minutes):
#   BUDGET=quick DEVICE=cpu PROMPTS=4 THREADS=2 bash scripts/speedrun_gpu.sh baseline tread
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash scripts/speedrun_gpu.sh RECIPE... (benchmarks/speedrun.py list)"; exit 2; }
BUDGET=${BUDGET:-gpu}; DEVICE=${DEVICE:-cuda}; PROMPTS=${PROMPTS:-200}; ROOT=${ROOT:-runs/speedrun}
export PYTHONPATH=. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
quiet() { tr '\r' '\n' | { grep -v "it/s\]$\|s/it\]$\|it/s, \|s/it, " || true; } | tail -"${1:-6}"; }
for recipe in "$@"; do
  echo "== $recipe at $(( $(date +%s) - T0 )) s"
  python benchmarks/speedrun.py run "$recipe" --budget "$BUDGET" --device "$DEVICE" --prompts "$PROMPTS" \
    --root "$ROOT" --threads "${THREADS:-0}" ${TEXT_ENCODER:+--text-encoder "$TEXT_ENCODER"} 2>&1 | quiet
  if [ -n "${PACK:-}" ]; then
    mkdir -p "$PACK/$BUDGET-$recipe"
    cp "$ROOT/$BUDGET-$recipe"/{speedrun.json,eval.json,log.csv} "$PACK/$BUDGET-$recipe/"
  fi
done
runs=(); for recipe in "$@"; do runs+=("$ROOT/$BUDGET-$recipe"); done
python benchmarks/speedrun.py table "${runs[@]}" | tee "${PACK:-$ROOT}/table-$BUDGET.md"
echo "== done at $(( $(date +%s) - T0 )) s"
