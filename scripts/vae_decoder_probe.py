"""Diagnostic, not training: do the shipped VAE's latents hold the shapes its decoder gets wrong?

    python scripts/vae_decoder_probe.py STEPS             # e.g. 1500 (about 13 min on 2 CPU threads)
    python scripts/vae_decoder_probe.py STEPS --latents   # e.g. 300: optimise the latents instead

Finds the held-out clips (eval split, first 300, 64x64x17) whose reconstruction fails the
evaluator's shape check, fine-tunes only the decoder (frozen encoder, as `train-vae
--finetune decoder`) on exactly those clips, and reports how many it then renders right. Misses that
a decoder can learn are information the latents already hold; misses it cannot learn even on the
clips themselves point at the encoder. Writes runs/vae_probe/ (not a VAE to ship: it has seen
eval clips).

``--latents`` asks the converse: with the shipped decoder frozen, Adam optimises each missed
clip's latent (starting from its encoding, L1 + MSE against the clip) and reports how many then
decode to the right shape, and how far the latents moved (rms, in the normalised units a DiT
sees). If the frozen decoder can draw the shape from some nearby latent, the encoder is what
fails to produce it; if it cannot, the decoder is the limit."""
import sys

import torch

from videodit.eval.metrics import score_video
from videodit.train.vae import VAETrainConfig, train_vae
from videodit.vae import VideoVAE
from videodit.video import frames_to_tensor, tensor_to_frames
from videodit.world import make_sample

torch.set_num_threads(2)


def shape_ok(video, sample) -> bool:
    """False only where the evaluator's shape check applies and fails."""
    m = score_video(video, sample.caption, fps=sample.truth["fps"]).metrics.get("shape")
    return m is None or m.passed is not False


def shape_fails(vae: VideoVAE, idx) -> list[int]:
    """The eval-clip indices among ``idx`` whose reconstruction fails the shape check."""
    out = []
    for i in idx:
        s = make_sample("eval", i, 0, width=64, height=64, frames=17)
        with torch.no_grad():
            r = tensor_to_frames(vae.decode(vae.encode(frames_to_tensor(s.frames[None]))).clamp(-1, 1))[0]
        if not shape_ok(r, s):
            out.append(i)
    return out


def latent_probe(vae: VideoVAE, idx, steps: int) -> None:
    vae.requires_grad_(False)
    fixed, moved = [], []
    for i in idx:
        s = make_sample("eval", i, 0, width=64, height=64, frames=17)
        x = frames_to_tensor(s.frames[None])
        with torch.no_grad():
            z0 = vae.encode(x)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.01)
        for _ in range(steps):
            err = vae.decode(z) - x
            loss = err.abs().mean() + err.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            r = tensor_to_frames(vae.decode(z).clamp(-1, 1))[0]
            rms = (vae.normalize(z) - vae.normalize(z0)).pow(2).mean().sqrt().item()
        ok = shape_ok(r, s)
        fixed += [i] if ok else []
        moved.append(rms)
        print(f"clip {i}: shape {'right' if ok else 'still wrong'}, latent moved rms {rms:.3f} (normalised)", flush=True)
    print(f"after {steps} Adam steps on the latents (decoder frozen): {len(fixed)} of {len(idx)} right; "
          f"latents moved rms {sum(moved) / len(moved):.3f} on average (normalised units, where the latents' std is 1)")


def decoder_probe(idx, steps: int) -> None:
    def make_stream(start: int):
        """The missed clips, over and over, in train-vae's stream format."""
        class Misses(torch.utils.data.IterableDataset):
            def __iter__(self):
                k = start
                while True:
                    s = make_sample("eval", idx[k % len(idx)], 0, width=64, height=64, frames=17)
                    yield {"video": frames_to_tensor(s.frames[None])[0]}
                    k += 1
        return Misses()

    cfg = VAETrainConfig(out="runs/vae_probe", steps=steps, batch_size=5, lr=3e-4, warmup_steps=20,
                         init="videodit/assets/bundle/vae", finetune="decoder", threads=2, resume=False, device="cpu",
                         ema_decay=0.99)
    tuned = VideoVAE.from_pretrained(train_vae(cfg, make_stream=make_stream))
    left = shape_fails(tuned, idx)
    print(f"after {steps} decoder-only steps on them: {len(left)} of {len(idx)} still missed: {left}")


base = VideoVAE.from_pretrained("videodit/assets/bundle/vae")
fails = shape_fails(base, range(300))
print("misses of the shipped VAE:", fails, flush=True)
if "--latents" in sys.argv:
    latent_probe(base, fails, int(sys.argv[1]))
else:
    decoder_probe(fails, int(sys.argv[1]))
