"""Random multi-view camera batches for SDS (MVDream §3.3; docs/design.md §3 and §10.2). Their rays come from
``mvforge.models.camera_batch.get_rays``, the one ray function of the model stages (design §1).

What a batch carries follows MVDream-threestudio's ``threestudio/data/random_multiview.py`` (design §10.2):
groups of ``n_view`` views that share elevation, fov, distance and light distance, with azimuths
``(u + k) / n_view * 360`` from one uniform ``u`` per group; each view has its own point light, placed from that
view's camera (design §10.2: every view is lit from near its own camera). The poses come from
:mod:`mvforge.cameras` (the convention of the renders and the trainer: Z up, azimuth 0 at -Y, OpenGL camera
axes), and the conditioning is its ``normalize_camera``, so the frozen model sees cameras exactly as it was
trained on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mvforge import cameras
from mvforge.sds.config import CameraConfig


@dataclass
class CameraBatch:
    """N = groups * n_view views; views of a group are contiguous. Tensors float32 on CPU unless moved."""

    c2w: torch.Tensor
    """(N, 4, 4) camera-to-world, mvforge axes (design §3)."""
    fov_deg: torch.Tensor
    """(N,) vertical = horizontal field of view in degrees."""
    elevation_deg: torch.Tensor
    """(N,) elevation above the XY plane in degrees."""
    azimuth_deg: torch.Tensor
    """(N,) azimuth in degrees in [0, 360), 0 at -Y, 90 at +X."""
    distance: torch.Tensor
    """(N,) distance of the camera from the origin in field units."""
    light_position: torch.Tensor
    """(N, 3) world position of each view's point light (its distance from the origin shared within a group)."""
    embedding: torch.Tensor
    """(N, 16) MVDream camera conditioning (``mvforge.cameras.normalize_camera``)."""
    n_view: int
    """Views per group."""

    def to(self, device: torch.device | str) -> CameraBatch:
        moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.__dict__.items()}
        return CameraBatch(**moved)


def _elevation(
    rng: np.random.Generator, low_deg: float, high_deg: float, uniform_deg: bool, rule: str
) -> float:
    """One elevation in degrees: uniform in degrees, or from the "sphere-uniform" branch.

    The sphere branch of the official sampler (random_multiview.py lines 59-74) draws
    ``asin(2 * U[(low + 90) / 180, (high + 90) / 180] - 1)``: uniform in sin(elevation) only over
    [sin(low), 2 * (high + 90) / 180 - 1], which for [0, 30] is [0, 1/3], i.e. elevations up to 19.47 deg, not 30
    (design §10.2). ``rule = "official"`` reproduces that; ``"sphere_uniform"`` draws
    ``asin(U[sin low, sin high])``, area-uniform over the whole range.
    """
    if uniform_deg:
        return float(rng.uniform(low_deg, high_deg))
    if rule == "official":
        u = rng.uniform((low_deg + 90.0) / 180.0, (high_deg + 90.0) / 180.0)
        return math.degrees(math.asin(min(max(2.0 * u - 1.0, -1.0), 1.0)))
    s = rng.uniform(math.sin(math.radians(low_deg)), math.sin(math.radians(high_deg)))
    return math.degrees(math.asin(s))


def sample_cameras(rng: np.random.Generator, cfg: CameraConfig, groups: int) -> CameraBatch:
    """``groups`` groups of ``cfg.n_view`` views, drawn from ``rng`` (deterministic given its state).

    As the official sampler (design §10.2): one coin per batch picks the elevation branch for every group of the
    batch (uniform in degrees or the sphere branch, see :func:`_elevation`); distances are
    ``U[distance_range] / tan(fov / 2)`` (``relative_radius``: the radius-1 field fills about the same share of
    the frame at every fov). Lights (``light_sample_strategy: dreamfusion``): per group one distance
    U[light_distance_range] and one Gaussian jitter N(0, light_position_perturb^2); view k's light lies at that
    distance in the direction normalize(camera position of view k + jitter), so every view is lit from near its
    own camera. Raises ValueError for groups < 1 or n_view < 1.
    """
    if groups < 1 or cfg.n_view < 1:
        raise ValueError("groups and n_view must be >= 1")
    uniform_deg = bool(rng.random() < 0.5)  # one coin per batch, as random_multiview.py line 50
    c2w, fov, elev, azim, dist, light, emb = [], [], [], [], [], [], []
    for _ in range(groups):
        elevation = _elevation(rng, *cfg.elevation_range_deg, uniform_deg, cfg.elevation_sampling)
        fov_deg = float(rng.uniform(*cfg.fov_range_deg))
        distance = float(rng.uniform(*cfg.distance_range)) / math.tan(math.radians(fov_deg) / 2)
        u = float(rng.random())
        light_distance = float(rng.uniform(*cfg.light_distance_range))
        jitter = rng.standard_normal(3) * cfg.light_position_perturb  # shared by the group's views
        for k in range(cfg.n_view):
            azimuth = ((u + k) / cfg.n_view * 360.0) % 360.0
            pose = cameras.orbit_c2w(elevation, azimuth, distance)
            direction = pose[:3, 3] + jitter  # random_multiview.py lines 160-170: per view camera + jitter
            c2w.append(pose)
            emb.append(cameras.normalize_camera(pose))
            fov.append(fov_deg)
            elev.append(elevation)
            azim.append(azimuth)
            dist.append(distance)
            light.append(direction / np.linalg.norm(direction) * light_distance)
    f32 = torch.float32
    return CameraBatch(
        c2w=torch.as_tensor(np.stack(c2w), dtype=f32),
        fov_deg=torch.tensor(fov, dtype=f32),
        elevation_deg=torch.tensor(elev, dtype=f32),
        azimuth_deg=torch.tensor(azim, dtype=f32),
        distance=torch.tensor(dist, dtype=f32),
        light_position=torch.as_tensor(np.stack(light), dtype=f32),
        embedding=torch.as_tensor(np.stack(emb), dtype=f32),
        n_view=cfg.n_view,
    )


def orbit_cameras(
    elevation_deg: float, azimuths_deg: list[float], fov_deg: float, distance: float
) -> CameraBatch:
    """Fixed cameras (snapshots, turntables, previews): one group of len(azimuths) views; light at the camera."""
    c2w = np.stack([cameras.orbit_c2w(elevation_deg, a, distance) for a in azimuths_deg])
    n = len(azimuths_deg)
    f32 = torch.float32
    return CameraBatch(
        c2w=torch.as_tensor(c2w, dtype=f32),
        fov_deg=torch.full((n,), fov_deg, dtype=f32),
        elevation_deg=torch.full((n,), elevation_deg, dtype=f32),
        azimuth_deg=torch.tensor([a % 360.0 for a in azimuths_deg], dtype=f32),
        distance=torch.full((n,), distance, dtype=f32),
        light_position=torch.as_tensor(c2w[:, :3, 3], dtype=f32),
        embedding=torch.as_tensor(cameras.normalize_camera(c2w), dtype=f32),
        n_view=n,
    )
