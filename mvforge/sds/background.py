"""The background behind the field: a small MLP of the view direction (docs/design.md §10.5).

threestudio's ``neural-environment-map-background`` as MVDream uses it, with a sinusoidal direction encoding
instead of spherical harmonics; each training step replaces it by one uniform random colour with probability
``random_color_prob`` (0.5, official) so the field cannot hide the object in the background. The draw is made by
:func:`draw_background_color` from the loop's per-step generator (exact resume).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mvforge.sds.config import BackgroundConfig


class EnvironmentBackground(nn.Module):
    """directions (..., 3) unit -> colour (..., 3) in [0, 1]."""

    def __init__(self, cfg: BackgroundConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer(
            "freqs", 2.0 ** torch.arange(cfg.n_frequencies, dtype=torch.float32), persistent=False
        )
        n_in = 3 + 6 * cfg.n_frequencies
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 3))

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        scaled = directions[..., None, :] * self.freqs[:, None]  # (..., K, 3)
        enc = torch.cat([directions, scaled.sin().flatten(-2), scaled.cos().flatten(-2)], dim=-1)
        return torch.sigmoid(self.mlp(enc))


def draw_background_color(
    rng: np.random.Generator, cfg: BackgroundConfig
) -> tuple[float, float, float] | None:
    """One random colour (replace the MLP this step) with probability ``random_color_prob``, else None; always
    ``cfg.color`` when it is set (the draw is still made, so the other streams do not depend on it)."""
    coin = rng.random()
    if cfg.color is not None:
        return tuple(float(c) for c in cfg.color)
    if coin < cfg.random_color_prob:
        r, g, b = rng.random(3)
        return (float(r), float(g), float(b))
    return None
