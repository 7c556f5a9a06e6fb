"""The fast training step (videodit/train/loop.py, `videodit train --compile`): the foreach EMA
equals the per-parameter formula bit for bit, the fused AdamW skips a flagged step on the device,
the guard still stops a diverging run when it reads the losses only on logged steps, padded text
leaves the DiT's output alone, and the compiled step's loss equals eager's within bf16 rounding."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from videodit.cli import main
from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError
from videodit.train import loop
from videodit.train.checkpoint import previous_path, read_checkpoint
from videodit.train.dit import DiTTrainConfig, pad_text


def _reference_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The per-parameter loop the foreach update replaced."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def _pair(seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    ema = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 3))
    model[1].running_mean.normal_()
    return ema, model


def test_foreach_ema_equals_the_per_parameter_formula_bit_for_bit():
    for decay in (0.999, 0.5, 1 / 3, 0.0):
        ema, model = _pair(0)
        reference, _ = _pair(0)
        for ok in (None, torch.tensor(True)):
            loop.ema_update(ema, model, decay, ok)
            _reference_ema(reference, model, decay)
            for a, b in zip(ema.state_dict().values(), reference.state_dict().values()):
                assert torch.equal(a, b), f"decay {decay}, ok {ok}"


def test_ema_stays_put_when_the_step_is_flagged_bad():
    ema, model = _pair(1)
    before = {k: v.clone() for k, v in ema.named_parameters()}
    loop.ema_update(ema, model, 0.9, torch.tensor(False))
    assert all(torch.equal(v, before[k]) for k, v in ema.named_parameters())


def test_fused_adamw_skips_a_flagged_step_on_the_device():
    class Cfg:
        lr, weight_decay = 1e-2, 0.1

    model = torch.nn.Linear(4, 4)
    opt = loop.make_optimizer(list(model.parameters()), Cfg, torch.device("cpu"), sharded=False)
    assert opt.defaults["fused"]
    model(torch.randn(2, 4)).square().sum().backward()
    weights = [p.detach().clone() for p in model.parameters()]
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert all(float(s["step"]) == 0 and not s["exp_avg"].any() for s in opt.state.values())
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert not torch.equal(model.weight, weights[0])


def test_padded_text_leaves_the_dit_output_alone():
    torch.manual_seed(0)
    dit = DiT(DiTConfig.preset("tiny")).eval()
    for p in dit.parameters():  # off the zero init, so the text matters
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 4, 2, 4, 4), torch.rand(2, 2)
    text, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    padded = pad_text(text, mask, 9)
    assert padded[0].shape == (2, 9, 32) and not padded[1][:, 5:].any()
    with torch.no_grad():
        torch.testing.assert_close(dit(x, t, *padded), dit(x, t, text, mask), rtol=0, atol=1e-6)
    assert pad_text(text, mask, 3)[0].shape == (2, 5, 32)  # never shortened


def test_compile_with_pack_is_refused():
    with pytest.raises(VideoditError, match="--compile .* --pack"):
        DiTTrainConfig(compile=True, pack=2).check()


def _args(out, vae, steps, *extra) -> list[str]:
    return ["train", "--preset", "tiny", "--vae", str(vae), "--out", str(out), "--steps", str(steps),
            "--batch-size", "2", "--sizes", "32x32", "--frames", "5", "--sample-every", "0",
            "--warmup-steps", "0", "--threads", "1", "--seed", "3", *extra]


def _losses(out) -> list[float]:
    with (out / "log.csv").open(newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_guard_reading_losses_only_on_logged_steps_still_stops_a_diverging_run(tmp_path, tiny_vae, capsys):
    run = tmp_path / "run"
    assert main(_args(run, tiny_vae, 40, "--lr", "1e8", "--log-every", "4", "--save-every", "4")) == 2
    err = capsys.readouterr().err
    assert "lower --lr" in err.strip().splitlines()[-1] and "rollback 1 of" in err
    for path in (run / "checkpoint.pt", previous_path(run / "checkpoint.pt")):
        if path.exists():
            payload = read_checkpoint(path, "dit")  # verifies checksum and finite values
            assert all(torch.isfinite(v).all() for v in payload["model"].values())


@pytest.mark.slow
@pytest.mark.parametrize("routing", [(), ("--route", "0.5", "--route-until", "0.6")], ids=["plain", "masked"])
def test_compiled_step_gives_eager_loss_within_bf16_rounding(tmp_path, tiny_vae, routing):
    """The same run, eager and through torch.compile (CPU, bf16 autocast): the first step sees
    the same weights, later ones weights that drifted by bf16 rounding only. Masked: two routed
    steps, then a plain one (two graphs)."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    common = ("--log-every", "1", "--save-every", "100", *routing)
    assert main(_args(eager, tiny_vae, 3, *common, "--no-compile")) == 0
    assert main(_args(compiled, tiny_vae, 3, *common, "--compile")) == 0
    a, b = _losses(eager), _losses(compiled)
    assert len(a) == len(b) == 3 and all(math.isfinite(v) for v in a + b)
    assert b == pytest.approx(a, rel=2e-2)
