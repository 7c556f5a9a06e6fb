"""Regenerate the model card's gallery: the first 12 SynthWorld eval prompts, seed = index (the
same videos `videodit eval --model bundled` makes first), as animated webp files (shown at 2x) in
docs/model/gallery/, plus gallery.md with the prompts and each clip's evaluator verdicts.

    python docs/model/make_gallery.py [--model BUNDLE] [--n 12]
"""
import argparse
from pathlib import Path

from videodit.eval import evaluate
from videodit.pipeline import Pipeline
from videodit.eval.sampling import eval_prompts
from videodit.video import write_video

here = Path(__file__).resolve().parent
ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default=None, help="model bundle (default: the bundled one)")
ap.add_argument("--n", type=int, default=12)
args = ap.parse_args()

pipe = Pipeline.load(args.model)
prompts = eval_prompts(args.n)
out = here / "gallery"
out.mkdir(exist_ok=True)
videos = []
for i, prompt in enumerate(prompts):
    frames = pipe(prompt, seed=i)
    videos.append(frames)
    write_video(out / f"{i:02d}.webp", frames, fps=pipe.config.fps)
result = evaluate(videos, prompts, fps=pipe.config.fps, progress=False)
rows = ["| clip | prompt (seed = row) | evaluator: passed / checked |", "|---|---|---|"]
for i, (prompt, video) in enumerate(zip(prompts, result.videos)):
    checked = {k: m.passed for k, m in video.metrics.items() if m.passed is not None}
    passed = [k for k, ok in checked.items() if ok]
    failed = [k for k, ok in checked.items() if not ok]
    parts = [", ".join(passed)] if passed else []
    parts += ["missed " + ", ".join(failed)] if failed else []
    verdict = f"{len(passed)}/{len(checked)}: " + "; ".join(parts)
    rows.append(f'| <img src="gallery/{i:02d}.webp" width="128" alt="clip {i}"> | {i}: {prompt} | {verdict} |')
(here / "gallery.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
