"""Pieces of the training step checked against hand formulas (no training run needed): the target, Min-SNR-γ
weighting and the noise offset (docs/train.md), and the config checks."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from mvforge import config as config_mod
from mvforge.errors import UserError
from mvforge.train.config import FitConfig
from mvforge.train.losses import diffusion_loss, min_snr_weights, sample_noise, training_target


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_matches_the_formula(prediction_type):
    sched = DDPMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([0, 500, 999])
    got = training_target(sched, x0, eps, t)
    if prediction_type == "epsilon":
        assert torch.equal(got, eps)
        return
    # v = sqrt(a_t) * eps - sqrt(1 - a_t) * x0, a_t the cumulative alpha product (Salimans & Ho 2022, §4).
    betas = torch.linspace(0.0001**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)[t].view(-1, 1, 1, 1)
    want = a.sqrt() * eps.double() - (1 - a).sqrt() * x0.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_min_snr_weighted_loss_equals_hand_computed_values():
    # alphas_cumprod with SNRs 1, 3 and 9 at t = 0, 1, 2: a = snr / (1 + snr).
    alphas = torch.tensor([0.5, 0.75, 0.9])
    t = torch.tensor([0, 1, 2])
    pred = torch.zeros(3, 1, 1, 2)
    target = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 1.0]).view(3, 1, 1, 2)  # per-sample MSE 1, 4, 5
    # gamma 5: eps weights min(snr, 5) / snr = 1, 1, 5/9; v weights min(snr, 5) / (snr + 1) = 1/2, 3/4, 1/2.
    assert min_snr_weights(alphas, t, 5.0, "epsilon").tolist() == pytest.approx([1.0, 1.0, 5 / 9])
    loss_eps = diffusion_loss(pred, target, t, alphas, 5.0, "epsilon")
    assert loss_eps.item() == pytest.approx((1 * 1 + 1 * 4 + 5 / 9 * 5) / 3)
    loss_v = diffusion_loss(pred, target, t, alphas, 5.0, "v_prediction")
    assert loss_v.item() == pytest.approx((0.5 * 1 + 0.75 * 4 + 0.5 * 5) / 3)
    assert diffusion_loss(pred, target, t, alphas, 0.0).item() == pytest.approx(10 / 3)  # plain MSE


def test_noise_offset_adds_a_per_channel_constant():
    shape = (2, 4, 3, 3)
    plain = sample_noise(shape, torch.Generator().manual_seed(7))
    offset = sample_noise(shape, torch.Generator().manual_seed(7), noise_offset=0.1)
    g = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=g)
    per_channel = torch.randn(2, 4, 1, 1, generator=g)
    assert torch.equal(plain, base)
    torch.testing.assert_close(offset, base + 0.1 * per_channel)
    diff = offset - plain
    assert torch.allclose(diff, diff[..., :1, :1].expand_as(diff))  # constant over h, w


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("grad_accum_steps=0", "grad_accum_steps"),
        ("optim.lr_scheduler='warp'", "optim.lr_scheduler"),
        ("mixed_precision='fp16'", "mixed_precision"),
        ("validation.prompts=[]", "validation.prompts"),
        ("validation.loss_batches=3", "validation.every"),  # no validation to compute it at: not ignored
    ],
)
def test_bad_configs_name_the_field(override, field):
    extra = ["device='cpu'"] if "fp16" in override else []
    if "prompts" in override:
        extra = ["validation.every=2", "validation.prompts_2d=[]"]
    with pytest.raises(UserError) as e:
        config_mod.load(FitConfig, None, [override, *extra])
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_ema_weights_follow_diffusers_decay_schedule(make_fit_config, tiny_sd, shards_3d, tmp_path):
    """unet_ema/ after step 1 equals the weights (decay 0 on the first update), and after step 2 equals
    d·ema₁ + (1 − d)·θ₂ with d = min((1 + 1) / (10 + 1), ema_decay) (diffusers' EMAModel without warm-up)."""
    import torch
    from diffusers import UNet2DConditionModel

    from mvforge.train.loop import fit

    out = tmp_path / "run"
    fit(
        make_fit_config(
            tiny_sd, shards_3d, out, max_steps=2, checkpoint_every=1, ema_warmup=False, keep_checkpoints=2
        )
    )
    ck = out / "checkpoints"

    def weights(step: int, sub: str) -> dict:
        unet = UNet2DConditionModel.from_pretrained(ck / f"step-{step:06d}", subfolder=sub)
        return {k: v.double() for k, v in unet.state_dict().items()}

    theta1, ema1 = weights(1, "unet"), weights(1, "unet_ema")
    theta2, ema2 = weights(2, "unet"), weights(2, "unet_ema")
    d = min(2 / 11, 0.9)
    assert any(not torch.equal(theta1[k], theta2[k]) for k in theta1)  # the weights did move
    for k in theta1:
        torch.testing.assert_close(ema1[k], theta1[k], rtol=0, atol=1e-7)
        torch.testing.assert_close(ema2[k], d * ema1[k] + (1 - d) * theta2[k], rtol=1e-5, atol=1e-7)


def test_resume_with_other_content_settings_is_refused(make_fit_config, tiny_sd, shards_3d, tmp_path):
    """A resumed run may extend max_steps or change execution settings, never the recipe (design §5)."""
    import dataclasses

    import pytest

    from mvforge.errors import UserError
    from mvforge.train.loop import fit

    out = tmp_path / "run"
    fit(make_fit_config(tiny_sd, shards_3d, out, max_steps=1, checkpoint_every=1))
    changed = make_fit_config(tiny_sd, shards_3d, out, max_steps=2, checkpoint_every=1)
    with pytest.raises(UserError, match=r"optim.lr was .*, now"):
        fit(dataclasses.replace(changed, optim=dataclasses.replace(changed.optim, lr=changed.optim.lr * 2)))
    fit(dataclasses.replace(changed, log_every=2))  # execution settings and a later max_steps resume


def test_a_resumed_optimizer_keeps_the_kernels_this_process_chose(tmp_path):
    """torch's load_state_dict takes ``foreach``/``fused`` from the checkpoint: a run saved with the default
    loop (or CUDA's fused kernel) would resume without the CPU's foreach kernels."""
    import json

    from mvforge.formats import runs
    from mvforge.train.checkpoint import load_training_state

    w = torch.nn.Parameter(torch.ones(3))
    saved = torch.optim.AdamW([w], lr=0.1, fused=True)  # as a CUDA run writes it
    sched = torch.optim.lr_scheduler.LambdaLR(saved, lambda s: 1.0)
    torch.save(saved.state_dict(), tmp_path / runs.OPTIMIZER)
    torch.save(sched.state_dict(), tmp_path / runs.LR_SCHEDULER)
    (tmp_path / runs.STATE).write_text(json.dumps({"step": 7}))
    now = torch.optim.AdamW([w], lr=0.1, foreach=True)
    step = load_training_state(
        tmp_path, torch.device("cpu"), now, torch.optim.lr_scheduler.LambdaLR(now, lambda s: 1.0), None
    )
    assert step == 7 and now.param_groups[0]["foreach"] is True and not now.param_groups[0]["fused"]


def test_every_seed_the_config_accepts_seeds_the_step_generator():
    from mvforge.train.loop import step_generator

    assert (
        step_generator(23, 5, 1, 2).initial_seed() == ((23 * 1_000_003 + 5) * 4099 + 1) * 1031 + 2
    )  # unchanged
    assert 0 <= step_generator(2**63 - 1, 10**9, 63, 7).initial_seed() < 2**63  # was an overflow traceback
