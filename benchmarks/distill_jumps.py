"""How far a distilled student's jumps land from its teacher's, step by step, and from which points.

    python benchmarks/distill_jumps.py --model runs/distill/bundle

For a few SynthWorld-style prompts at the bundle's guidance: at each step t_i -> t_{i+1} of the
student's schedule, ||student jump - teacher jump|| / ||teacher jump|| (the teacher's jump being
what the student was trained on: DistillInfo.substeps guided Euler steps), from three kinds of
point x at t_i: the data's noising path ((1 - t) x_0 + t noise, with x_0 the teacher's own
samples: where the student trains), the teacher's trajectory from noise, and the student's own
trajectory from the same noise (where it samples). Equal errors on all three say the student
fails to fit the jumps; a larger error on its own trajectory says its errors compound
(docs/DISTILL.md, "Known limits").
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the videodit command does (videodit/cli.py)

PROMPTS = ["A red circle moves to the right on a black background.",
           "Two yellow squares move slowly down on a gray background.",
           "A large blue triangle falls on a white background.",
           "A green circle is to the left of a red square, on a black background.",
           "A purple square moves up on a white background.",
           "Three cyan circles stay still on a black background."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a bundle with a distilled/ student (videodit distill)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from videodit import distill, flow
    from videodit.pipeline import Pipeline

    torch.manual_seed(args.seed)
    pipe = Pipeline.load(args.model)
    if pipe.distilled is None:
        raise SystemExit(f"{args.model}: no distilled/ student in this bundle (run videodit distill)")
    teacher, student, info = pipe.dit, pipe.distilled.dit, pipe.distilled.info
    tokens, mask = pipe.text.encode(PROMPTS)
    B = len(PROMPTS)
    shape = (B, *pipe.latent_shape(pipe.config.frames, pipe.config.size))
    schedule = flow.sampling_timesteps(info.steps, flow.shift_for(shape, teacher.config.patch))
    free, w = torch.ones(B, shape[2]), torch.full((B,), info.guidance)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        both = teacher.text_kv(torch.cat([tokens, torch.zeros_like(tokens)]), torch.cat([mask, torch.zeros_like(mask)]))
        own = student.text_kv(tokens, mask)

        def teacher_step(x, i):
            t0, t1 = schedule[i].expand(B), schedule[i + 1].expand(B)
            return distill.teacher_jump(teacher, x, t0, t1, both, w, info.guidance_interval, info.substeps, free)

        def student_step(x, i):
            v = student(x, schedule[i].expand(B)[:, None] * free, text_kv=own, guidance=w).float()
            return x + (schedule[i + 1] - schedule[i]) * v

        noise = torch.randn(shape)
        path_t, path_s = [noise], [noise]
        for i in range(info.steps):
            path_t.append(teacher_step(path_t[-1], i))
            path_s.append(student_step(path_s[-1], i))
        other = torch.randn(shape)
        print(f"{args.model}: {info.steps} student steps, {info.substeps} teacher substeps each, guidance {info.guidance}")
        print("| step | t | from the noising path | from the teacher's path | from the student's path |")
        print("|---|---|---|---|---|")
        for i in range(info.steps):
            t = schedule[i].item()
            starts = ((1 - t) * path_t[-1] + t * other, path_t[i], path_s[i])
            errors = []
            for x in starts:
                target = teacher_step(x, i)
                errors.append(((student_step(x, i) - target).norm() / (target - x).norm()).item())
            print(f"| {i} | {t:.3f} | " + " | ".join(f"{e:.3f}" for e in errors) + " |")
        end = ((path_s[-1] - path_t[-1]).norm() / path_t[-1].norm()).item()
        print(f"SUMMARY final_latent_rel_diff={end:.3f}")


if __name__ == "__main__":
    main()
