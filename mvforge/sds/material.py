"""Shading of the field's samples: albedo, Lambertian with a point light, textureless (docs/design.md §10.3).

threestudio's ``diffuse-with-point-light`` material (``threestudio/models/materials/
diffuse_with_point_light_material.py``) as MVDream's shading yaml configures it (docs/design.md §10.3): albedo
only during the first ``ambient_only_steps`` (the shape forms before lighting is asked of it), then per step
albedo with probability 1 - ``diffuse_prob`` (0.75, the class default the yaml keeps), else a textureless (white
albedo) render with probability ``textureless_prob`` (0.5), else the lit albedo: 25 % / 37.5 % / 37.5 %. Lit
steps use soft shading (diffuse ~ U[0, 1], ambient = 1 - diffuse). One mode for the whole batch, as the
official draws it once per forward. The random draws are made by :func:`draw_shading` from a generator the loop
seeds per step, so a resumed run repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mvforge.sds.config import MaterialConfig

ShadingMode = Literal["albedo", "lambertian", "textureless"]


@dataclass(frozen=True)
class Shading:
    """One step's shading: the mode and the light intensities (scalars in [0, 1])."""

    mode: ShadingMode
    ambient: float
    diffuse: float

    @property
    def needs_normals(self) -> bool:
        return self.mode != "albedo"


ALBEDO = Shading("albedo", 1.0, 0.0)
"""Unlit albedo: the warm-up, snapshots and the turntable. The official evaluation renders are "diffuse" with the
yaml's ambient 1.0 and diffuse 0.0, i.e. the albedo itself (docs/design.md §10.3)."""


def draw_shading(rng: np.random.Generator, cfg: MaterialConfig, step: int) -> Shading:
    """The shading of training step ``step`` (draws from ``rng`` only after the ambient-only warm-up).

    The official order (diffuse_with_point_light_material.py lines 84-92): albedo when ``random() >
    diffuse_prob``, else textureless when ``random() < textureless_prob``, else lit albedo ("lambertian" here,
    "diffuse" there)."""
    if step < cfg.ambient_only_steps:
        return ALBEDO
    if rng.random() >= cfg.diffuse_prob:
        return ALBEDO
    mode: ShadingMode = "textureless" if rng.random() < cfg.textureless_prob else "lambertian"
    if cfg.soft_shading:
        diffuse = float(rng.random())
        return Shading(mode, 1.0 - diffuse, diffuse)
    return Shading(mode, cfg.ambient_light, cfg.diffuse_light)


def shade(
    albedo: torch.Tensor,
    normals: torch.Tensor | None,
    points: torch.Tensor,
    light_position: torch.Tensor,
    shading: Shading,
) -> torch.Tensor:
    """Colour (P, 3) in [0, 1] of samples.

    albedo (P, 3) in [0, 1]; normals (P, 3) unit (needed unless mode is albedo); points (P, 3) and
    light_position (P, 3) in world units. colour = a * (ambient + diffuse * max(n . l, 0)), with a = 1 for
    textureless. Raises ValueError when a lit mode gets no normals.
    """
    if shading.mode == "albedo":
        return albedo
    if normals is None:
        raise ValueError(f"shading mode {shading.mode} needs normals")
    to_light = torch.nn.functional.normalize(light_position - points, dim=-1)
    lambert = (normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    base = torch.ones_like(albedo) if shading.mode == "textureless" else albedo
    return (base * (shading.ambient + shading.diffuse * lambert)).clamp(0.0, 1.0)
