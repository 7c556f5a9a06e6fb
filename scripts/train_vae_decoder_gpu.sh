#!/usr/bin/env bash
# Widen and train the bundled VAE's decoder on one GPU, time-boxed (docs/TRAINING.md, "Wider decoders").
# The encoder stays frozen (--finetune decoder), so the latents, and the bundled DiT trained on them,
# stay valid. Each width in WIDTHS is its own train-vae run, all at once on the same GPU; each
# starts as an exact copy of the bundled decoder (--decoder-channels, videodit.vae.widen) and learns
# on fresh SynthWorld clips until the budget is spent.
#
#   bash scripts/train_vae_decoder_gpu.sh BUDGET_SECONDS     # e.g. 540 on one H200
#
# Environment: WIDTHS (default "24 32": decoder channels at full resolution),
# BATCH (default 32), LR (default 2e-4), WORKERS (default 14, shared by the runs), SEED (default 3),
# INIT (default videodit/assets/bundle/vae), PACK (a folder, e.g. $OUT on a device machine: each
# bundle as a tar in 15 MiB parts plus its log.csv; here: cat PACK/vae_dec32.tar.part* | tar xf -).
# A quick CPU smoke test of the script itself: WIDTHS=40 BATCH=1 WORKERS=1 bash scripts/train_vae_decoder_gpu.sh 75
# Outputs: runs/vae_dec{W}/ (checkpoint.pt, log.csv, bundle/). Measure them on CPU afterwards with
# evaluate_reconstruction (300 held-out clips) and benchmarks/eval_in_memory.py (with the DiT).
set -euo pipefail
BUDGET=${1:-540}
T0=$(date +%s)
WIDTHS=${WIDTHS:-24 32}; BATCH=${BATCH:-32}; LR=${LR:-2e-4}; WORKERS=${WORKERS:-14}; SEED=${SEED:-3}
INIT=${INIT:-videodit/assets/bundle/vae}
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/gpu_runs.sh"
read -ra W <<< "$WIDTHS"
PER_RUN_WORKERS=$(( WORKERS / ${#W[@]} > 0 ? WORKERS / ${#W[@]} : 1 ))
# Leave about 45 s for start-up, the final checkpoint, the bundle and packing.
MINUTES=$(python3 -c "print(max(0.1, ($BUDGET - 45) / 60))")
echo "== ${#W[@]} decoder run(s) (widths ${WIDTHS}), ${MINUTES} min each, ${PER_RUN_WORKERS} workers each"
mkdir -p runs
pids=()
for w in "${W[@]}"; do
  python3 -m videodit.cli train-vae --out "runs/vae_dec$w" --init "$INIT" --finetune decoder --decoder-channels "$w" \
    --steps 1000000 --max-minutes "$MINUTES" --batch-size "$BATCH" --lr "$LR" --warmup-steps 200 \
    --num-workers "$PER_RUN_WORKERS" --seed "$SEED" --save-minutes 2 --log-every 50 --no-resume \
    > "runs/vae_dec$w.log" 2>&1 &
  pids+=($!)
done
finish_runs vae_dec "${W[@]}"
