"""Score VAE decoders on the same DiT samples: the bundle's DiT samples latents for N SynthWorld
eval prompts once, every VAE decodes exactly those latents, and the evaluator scores each set of
videos. Only the decoder differs, so the comparison is paired down to the noise.

    python benchmarks/eval_decoders.py VAE [VAE ...] --n 300 --out runs/dec   # + the bundle's own VAE

Every VAE must share the bundle VAE's latent space: its encoder and latent statistics (what
``train-vae --decoder-only`` keeps, with or without ``--decoder-channels``); that is checked.
Writes OUT/latents.pt (reused when it matches --n, --seed and --batch) and OUT/<name>.json per
VAE, in ``videodit eval --json``'s format: compare them with
``python benchmarks/eval_sizes.py OUT/bundle.json OUT/<name>.json``. Batches of prompts share one
sampler seed (SEED + first index), as in ``benchmarks/eval_in_memory.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vaes", nargs="+", help="VAE bundle folders (config.json + model.safetensors)")
    ap.add_argument("--model", default="bundled", help="the model bundle whose DiT samples (default: bundled)")
    ap.add_argument("--n", type=int, default=300, help="SynthWorld eval prompts (default 300)")
    ap.add_argument("--batch", type=int, default=50, help="prompts per sampling batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder for latents.pt and one JSON per VAE")
    args = ap.parse_args()

    import torch

    from videodit.errors import VideoditError
    from videodit.eval import evaluate
    from videodit.pipeline import Pipeline
    from videodit.eval.sampling import eval_prompts
    from videodit.vae import VideoVAE

    pipe = Pipeline.load(args.model)
    own = pipe.vae.cfg
    vaes = {"bundle": pipe.vae}
    for path in args.vaes:
        vae = VideoVAE.from_pretrained(path)
        same = (vae.cfg.latent_channels, vae.cfg.latent_shift, vae.cfg.latent_scale, vae.cfg.latent_channel_shift,
                vae.cfg.latent_channel_scale) == (own.latent_channels, own.latent_shift, own.latent_scale,
                                                  own.latent_channel_shift, own.latent_channel_scale)
        enc, ref = vae.encoder.state_dict(), pipe.vae.encoder.state_dict()
        if not same or enc.keys() != ref.keys() or not all(torch.equal(enc[k], ref[k].to(enc[k])) for k in enc):
            raise VideoditError(f"{path}: not the bundle VAE's latent space (a different encoder or latent "
                                "statistics); the DiT's latents would mean something else to it")
        vaes[Path(path).name] = vae

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = eval_prompts(args.n)
    key = {"model": args.model, "n": args.n, "seed": args.seed, "batch": args.batch}
    cache = out / "latents.pt"
    if cache.exists() and (saved := torch.load(cache))["key"] == key:
        latents = saved["latents"]
        print(f"latents from {cache}")
    else:
        t0 = time.perf_counter()
        parts = []
        for start in range(0, len(prompts), args.batch):
            batch = prompts[start:start + args.batch]
            sampler = pipe.sampler(seed=args.seed + start)
            parts.append(pipe.generate_latents(batch, frames=pipe.config.frames, size=pipe.config.size,
                                               sampler=sampler).cpu())
            print(f"sampled {start + len(batch)}/{len(prompts)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        latents = torch.cat(parts)
        torch.save({"key": key, "latents": latents}, cache)

    for name, vae in vaes.items():
        pipe.vae = vae
        t0 = time.perf_counter()
        videos = [v for start in range(0, len(latents), 25) for v in pipe.decode_latents(latents[start:start + 25])]
        t_dec = time.perf_counter() - t0
        result = evaluate(videos, prompts, fps=pipe.config.fps)
        report = result.to_json()
        report["setup"] = {"model": args.model, "vae": name, **key, "decode_s": round(t_dec, 1)}
        (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"{name}: {result.score_line()} (decode {t_dec:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
