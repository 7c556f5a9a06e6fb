"""Guidance + step distillation (videodit/distill.py, videodit/train/distill.py): the student
starts as its teacher, the teacher's guided jump, saving and loading a student, `videodit distill`
end to end (resume, bundle, sampling through the student by default, the teacher on request)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import make_tiny_bundle, random_dit
from videodit import bundle, distill
from videodit.cli import main
from videodit.errors import VideoditError
from videodit.lora import LoRAConfig
from videodit.pipeline import Pipeline
from videodit.sample import SamplerConfig, generate


def _inputs(seed=0, B=2, T=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, 4, 4, generator=g)
    text = torch.randn(B, 5, 32, generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, text, mask


def test_student_starts_as_the_teachers_conditional_model():
    teacher = random_dit().eval()
    student = distill.make_student(teacher, LoRAConfig(rank=4)).eval()
    x, text, mask = _inputs()
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        want = teacher(x, t, text, mask)
        for w in (1.0, 4.0):
            torch.testing.assert_close(student(x, t, text, mask, guidance=w), want)
    trained = {n for n, p in student.named_parameters() if p.requires_grad}
    assert any("lora_a" in n for n in trained) and "guidance_embed.2.weight" in trained
    assert "blocks.0.self_attn.qkv.weight" not in trained and "text_embed.0.weight" not in trained


def test_guidance_input_needs_a_student():
    x, text, mask = _inputs()
    with pytest.raises(VideoditError, match="guidance-distilled"):
        random_dit()(x, torch.rand(2), text, mask, guidance=3.0)


def test_teacher_jump_is_guided_euler_and_holds_conditioning_frames():
    teacher = random_dit().eval()
    x, text, mask = _inputs(1)
    both = teacher.text_kv(torch.cat([text, torch.zeros_like(text)]), torch.cat([mask, torch.zeros_like(mask)]))
    t0, t1 = torch.tensor([1.0, 0.6]), torch.tensor([0.5, 0.2])
    w = torch.tensor([3.0, 2.0])
    free = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # clip 1: frame 0 is a conditioning frame
    with torch.no_grad():
        got = distill.teacher_jump(teacher, x, t0, t1, both, w, (0.0, 1.0), 2, free)
        # The same, clip by clip, with the sampler's own guided velocity and Euler steps.
        for b in range(2):
            kv = teacher.text_kv(torch.cat([text[b:b + 1], torch.zeros_like(text[:1])]),
                                 torch.cat([mask[b:b + 1], torch.zeros_like(mask[:1])]))
            xb = x[b:b + 1]
            for j in range(2):
                s = t0[b] + (t1[b] - t0[b]) * j / 2
                t = (s * free[b:b + 1])
                vc, vu = teacher(torch.cat([xb, xb]), torch.cat([t, t]), text_kv=kv).chunk(2)
                xb = xb + (t1[b] - t0[b]) / 2 * (vu + w[b] * (vc - vu)) * free[b][None, None, :, None, None]
            torch.testing.assert_close(got[b:b + 1], xb, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1, :, 0], x[1, :, 0])


def test_save_and_load_give_the_same_student(tmp_path):
    teacher = random_dit().eval()
    student = distill.make_student(teacher, LoRAConfig(rank=4))
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    info = distill.DistillInfo(steps=4, substeps=2, guidance=3.0, guidance_interval=(0.2, 0.9))
    distill.save(student, LoRAConfig(rank=4), info, tmp_path / "distilled")
    stored = bundle.load_tensors(tmp_path / "distilled" / bundle.WEIGHTS)
    assert stored and all(v.dtype == torch.float16 for v in stored.values())
    loaded = distill.load(teacher, tmp_path / "distilled")
    assert loaded.info == info and not any(isinstance(m, torch.nn.Linear) and hasattr(m, "lora_a")
                                           for m in loaded.dit.modules())
    x, text, mask = _inputs(2)
    t, w = torch.tensor([0.4, 0.7]), torch.tensor([2.0, 5.0])
    with torch.no_grad():  # (the adapters are stored in fp16: equal up to its rounding)
        torch.testing.assert_close(loaded.dit(x, t, text, mask, guidance=w), student.eval()(x, t, text, mask, guidance=w),
                                   atol=2e-2, rtol=2e-2)
    other = random_dit(dataclasses.replace(teacher.config, depth=1))
    with pytest.raises(VideoditError, match="another DiT"):
        distill.load(other, tmp_path / "distilled")


def test_distilled_solver_needs_a_student():
    x, text, mask = _inputs()
    with pytest.raises(VideoditError, match="distilled student"):
        generate(random_dit(), text, mask, tuple(x.shape), SamplerConfig(steps=2, solver="distilled"))


@pytest.fixture(scope="module")
def distilled_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = make_tiny_bundle(root)
    out = root / "student"
    args = ["distill", "--init", str(teacher), "--vae", str(root / "vae"), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--tokens-per-batch", "0", "--sizes", "32x32", "--frames", "5", "--threads", "1",
            "--lora", "2", "--student-steps", "3", "--teacher-substeps", "2", "--save-every", "1", "--log-every", "1"]
    assert main(args) == 0
    return teacher, out, args


def test_distill_command_writes_a_bundle_that_samples_with_the_student(distilled_bundle, one_thread):
    teacher_path, out, _ = distilled_bundle
    bundle = out / "bundle"
    assert (bundle / "distilled" / "model.safetensors").is_file() and (bundle / "dit" / "model.safetensors").is_file()
    pipe = Pipeline.load(bundle)
    assert pipe.config.sampler.solver == "distilled" and pipe.config.sampler.steps == 3
    assert pipe.distilled is not None and pipe.distilled.info.substeps == 2
    calls = []
    for model in (pipe.dit, pipe.distilled.dit):
        model.register_forward_hook(lambda m, a, o, who=model: calls.append(who is pipe.dit))
    video = pipe("a red circle", frames=5, size=(32, 32))
    assert video.shape == (5, 32, 32, 3) and calls == [False] * 3, "the student, one pass per step"
    calls.clear()
    pipe("a red circle", frames=5, size=(32, 32), solver="euler", steps=2)
    assert calls and all(calls), "--solver euler samples the teacher"
    calls.clear()
    with pytest.warns(UserWarning, match="negative prompt"):
        pipe("a red circle", frames=5, size=(32, 32), negative="blue")
    assert calls and all(calls)
    # The teacher's weights are the --init bundle's, unchanged.
    a = (teacher_path / "dit" / "model.safetensors").read_bytes()
    assert a == (bundle / "dit" / "model.safetensors").read_bytes()


def test_distill_resumes_exactly(distilled_bundle, tmp_path):
    _, out, args = distilled_bundle
    # Two steps straight (the fixture) == one step, then a resume to two.
    other = tmp_path / "b"
    changed = [str(other) if a == str(out) else a for a in args]
    assert main([*changed[:changed.index("--steps") + 1], "1", *changed[changed.index("--steps") + 2:]]) == 0
    assert main(changed) == 0
    from safetensors.torch import load_file

    a = load_file(out / "bundle" / "distilled" / "model.safetensors")
    b = load_file(other / "bundle" / "distilled" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distill_refuses_flags_it_cannot_use(tmp_path):
    assert main(["distill", "--out", str(tmp_path), "--pack", "2"]) == 2
    assert main(["distill", "--out", str(tmp_path), "--guidance-range", "5", "2"]) == 2
