"""Pieces of the training step checked against hand formulas (no training run needed)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from mvforge.train.loop import ema_update, training_target


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


def test_ema_update_is_decay_weighted_average():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for e, b, m in zip(ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * m.detach())
