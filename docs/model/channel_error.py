"""How wrong a DiT's clean-latent estimate is, per latent channel, on real eval clips:
    python docs/model/channel_error.py [BUNDLE] [N_CLIPS]

Encodes the first N SynthWorld eval clips (default 48) with the bundle's VAE, noises their
normalised latents to t = 0.1 ... 0.9 (fixed seed), and prints, per channel, the mean squared
error of x0 = x_t - t v (the DiT's estimate of the clean latent, conditioned on the caption),
absolute and relative to that channel's variance."""
import sys

import numpy as np
import torch

from videodit.pipeline import Pipeline
from videodit.video import frames_to_tensor
from videodit.world import make_sample

bundle = sys.argv[1] if len(sys.argv) > 1 else "videodit/assets/bundle"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 48
pipe = Pipeline.load(bundle)
samples = [make_sample("eval", i) for i in range(n)]
z = pipe.encode_video(frames_to_tensor(np.stack([s.frames for s in samples]))).float()
text, mask = pipe.encode_prompts([s.caption for s in samples])
var = z.var(dim=(0, 2, 3, 4))
print("channel std of the real latents:", " ".join(f"{v:.2f}" for v in var.sqrt()))
gen = torch.Generator().manual_seed(0)
for t in (0.1, 0.3, 0.5, 0.7, 0.9):
    x_t = (1 - t) * z + t * torch.randn(z.shape, generator=gen)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        v = torch.cat([pipe.dit(x_t[i:i + 16], torch.full((len(x_t[i:i + 16]),), t), text[i:i + 16], mask[i:i + 16])
                       for i in range(0, n, 16)])
    err = (x_t - t * v.float() - z).pow(2).mean(dim=(0, 2, 3, 4))
    print(f"t={t}: x0 MSE", " ".join(f"{e:.3f}" for e in err), "| / channel variance",
          " ".join(f"{r:.2f}" for r in err / var))
