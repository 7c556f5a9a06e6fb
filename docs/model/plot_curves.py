"""Draw docs/model/curves.png from the training logs kept beside this file.

    python docs/model/plot_curves.py          (needs matplotlib, not a videodit dependency)
"""
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(__file__).resolve().parent
dit = list(csv.DictReader(open(here / "dit_train_log.csv")))  # the bundled cpu-medium DiT, one H100
vae = list(csv.DictReader(open(here / "vae_finetune_log.csv")))
# The VAE's decoder was fine-tuned alone afterwards (--finetune decoder, on a GPU); its log counts from 0.
dec = list(csv.DictReader(open(here / "vae_decoder_log.csv")))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
ax = axes[0]
for frames, colour in (("1", "tab:blue"), ("9", "tab:orange"), ("17", "tab:green"), ("33", "tab:red")):
    rows = [r for r in dit if r["bucket"].split("x")[2] == frames]
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], ".", color=colour,
            label=f"{frames}-frame batches")
ax.set(title="DiT flow-matching loss (logged batch)", xlabel="step", ylabel="loss", yscale="log")
# The main run ended its cosine schedule at step 2436; a second call resumed it to 3496 with the
# schedule stretched to 3500 steps (the learning rate rose to 1.6e-4, then decayed again).
ax.axvline(2436, color="gray", lw=0.8, ls="--")
ax.text(2450, ax.get_ylim()[1] * 0.7, "resumed", fontsize=8, color="gray")
ax.legend(fontsize=7)
ax = axes[1]
ax.plot([int(r["step"]) for r in dit], [float(r["lr"]) for r in dit], color="tab:purple")
ax.set(title="DiT learning rate", xlabel="step")
ax = axes[2]
ax.plot([int(r["step"]) for r in vae], [float(r["psnr"]) for r in vae], color="tab:green",
        label="whole VAE, batch 16")
end = int(vae[-1]["step"])
ax.plot([end + int(r["step"]) for r in dec], [float(r["psnr"]) for r in dec], color="tab:olive",
        label="decoder only, batch 32")
ax.set(title="VAE fine-tunes (GPU): batch PSNR, dB", xlabel="step")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(here / "curves.png", dpi=90)
print("wrote", here / "curves.png")
