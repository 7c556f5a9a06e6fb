#!/usr/bin/env bash
# Train the bundled VAE's encoder against its frozen decoder on one GPU, time-boxed (docs/TRAINING.md,
# "How to run the GPU training scripts"). With --finetune encoder the decoder, and so every frame the bundled DiT's samples
# decode to, stays exactly as shipped, and so do the latent statistics: text-to-video does not
# change at all; only encoded inputs (image-to-video, extend, connect, loop, edit) do, and
# --anchor-weight can hold those near the latents the DiT was trained on. So this needs no DiT
# training: the whole budget goes to the encoder. Each variant is its own train-vae run, all at
# once on the same GPU.
#
#   bash scripts/train_vae_encoder_gpu.sh BUDGET_SECONDS     # e.g. 540 on one H200
#
# Environment: VARIANTS (NAME:FLAGS pairs separated by ';', each a run in runs/vae_enc_NAME; default
# "w32:--encoder-channels 32 --anchor-weight 0.02;w16:--anchor-weight 0.02": the bundled encoder,
# which has a pixel shortcut (an --init's shortcut is kept), widened to 32
# channels and as it is, both lightly anchored), BATCH (default 32), CROP (default 32: focused crops of that size, 0 = whole 64x64 clips),
# EDGE (default 4: --edge-weight), LR (default 2e-4), WORKERS (default 14, shared by the runs),
# SEED (default 5), INIT (default videodit/assets/bundle/vae), PACK (a folder, e.g. $OUT on a device
# machine: each bundle as a tar in 15 MiB parts plus its log.csv; here:
# cat PACK/vae_enc_NAME.tar.part* | tar xf -).
# A quick CPU smoke test of the script itself: BATCH=1 WORKERS=1 bash scripts/train_vae_encoder_gpu.sh 75
# Then measure each bundle here on 300 held-out clips (evaluate_reconstruction; shape must reach
# 0.98) and the prompting modes that encode inputs (benchmarks/prompting.py) against the shipped VAE.
set -euo pipefail
BUDGET=${1:-540}
T0=$(date +%s)
VARIANTS=${VARIANTS:-"w32:--encoder-channels 32 --anchor-weight 0.02;w16:--anchor-weight 0.02"}
BATCH=${BATCH:-32}; CROP=${CROP:-0}; EDGE=${EDGE:-4}; LR=${LR:-2e-4}
WORKERS=${WORKERS:-14}; SEED=${SEED:-5}; INIT=${INIT:-videodit/assets/bundle/vae}
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/gpu_runs.sh"
IFS=';' read -ra V <<< "$VARIANTS"
PER_RUN_WORKERS=$(( WORKERS / ${#V[@]} > 0 ? WORKERS / ${#V[@]} : 1 ))
CROP_FLAGS=()
[ "$CROP" != 0 ] && CROP_FLAGS=(--crop-size "$CROP" --crop-focus)
# Leave about 45 s for start-up, the final checkpoint, the bundle and packing.
MINUTES=$(python3 -c "print(max(0.1, ($BUDGET - 45) / 60))")
echo "== ${#V[@]} encoder run(s), ${MINUTES} min each, ${PER_RUN_WORKERS} workers each"
mkdir -p runs
names=(); pids=()
for v in "${V[@]}"; do
  name=${v%%:*}; read -ra flags <<< "${v#*:}"
  names+=("$name")
  python3 -m videodit.cli train-vae --out "runs/vae_enc_$name" --init "$INIT" --finetune encoder "${flags[@]}" \
    --edge-weight "$EDGE" "${CROP_FLAGS[@]}" \
    --steps 1000000 --max-minutes "$MINUTES" --batch-size "$BATCH" --lr "$LR" --warmup-steps 200 \
    --num-workers "$PER_RUN_WORKERS" --seed "$SEED" --save-minutes 2 --log-every 50 --no-resume \
    > "runs/vae_enc_$name.log" 2>&1 &
  pids+=($!)
done
finish_runs vae_enc_ "${names[@]}"
