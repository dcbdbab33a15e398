"""Batched cameras for the model stages (sampling, SDS, eval): many views at once, in numpy or torch.

The same convention as ``mvforge/cameras.py`` (design §3: Blender world, Z up; c2w in OpenGL axes; azimuth 0 at
-Y, 90 at +X), vectorised. ``cameras.py`` stays numpy-only because every Blender child imports it; torch is never
imported here either: a function computes in torch when it is given tensors (on their device and dtype) and in
numpy (float64) otherwise.
"""

from __future__ import annotations

import math

import numpy as np


def _ns(*xs):
    """(namespace, as_array) for the inputs: torch when any input is a tensor, else numpy."""
    like = next((x for x in xs if type(x).__module__.startswith("torch")), None)
    if like is None:
        return np, lambda a: np.asarray(a, dtype=np.float64)
    import torch

    dtype = like.dtype if like.is_floating_point() else torch.float32
    return torch, lambda a: torch.as_tensor(a, dtype=dtype, device=like.device)


def orbit_c2w_batch(elevation_deg, azimuth_deg, distance=1.0):
    """c2w (..., 4, 4) of orbit cameras looking at the origin; the inputs broadcast against each other.

    Equals ``cameras.orbit_c2w`` element by element (MVDream ``get_camera(..., blender_coord=True)``).
    Elevations of exactly +-90 deg are degenerate (view direction parallel to Z up), as there.
    """
    xp, arr = _ns(elevation_deg, azimuth_deg, distance)
    el, az, d = (arr(x) for x in (elevation_deg, azimuth_deg, distance))
    el, az, d = xp.broadcast_arrays(el, az, d) if xp is np else xp.broadcast_tensors(el, az, d)
    el, az = el * (math.pi / 180), az * (math.pi / 180)
    # back = unit vector from the origin to the camera (+Z of the camera); right = up x back; up' = back x right.
    bx, by, bz = xp.sin(az) * xp.cos(el), -xp.cos(az) * xp.cos(el), xp.sin(el)
    rn = xp.sqrt(bx * bx + by * by)
    rx, ry, rz = -by / rn, bx / rn, xp.zeros_like(bx)
    ux, uy, uz = by * rz - bz * ry, bz * rx - bx * rz, bx * ry - by * rx
    zero, one = xp.zeros_like(bx), xp.ones_like(bx)
    rows = [
        [rx, ux, bx, d * bx],
        [ry, uy, by, d * by],
        [rz, uz, bz, d * bz],
        [zero, zero, zero, one],
    ]
    return xp.stack([xp.stack(r, -1) for r in rows], -2)


def camera_embedding(c2w):
    """MVDream's 16-d camera conditioning (..., 16) of c2w (..., 4, 4): translation scaled to unit length,
    flattened row-major (design §3; equals ``cameras.normalize_camera``, float32 for numpy input). Never
    mutates its input; differentiable for tensors."""
    xp, _ = _ns(c2w)
    if xp is np:
        c2w = np.array(c2w, dtype=np.float32, copy=True)
        norm = np.linalg.norm(c2w[..., :3, 3], axis=-1, keepdims=True)
    else:
        c2w = c2w.clone()
        norm = c2w[..., :3, 3].norm(dim=-1, keepdim=True)
    c2w[..., :3, 3] = c2w[..., :3, 3] / xp.where(norm == 0, xp.ones_like(norm), norm)
    return c2w.reshape(*c2w.shape[:-2], 16)


def orthogonal_views(azimuth_start_deg=90.0, num_views: int = 4):
    """Azimuths (..., V) in degrees: V views 360/V apart from each start azimuth (4 views: 90 deg apart).

    MVDream samples 4 orthogonal views; the official inference starts at 90 deg (design §10).
    """
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    xp, arr = _ns(azimuth_start_deg)
    start = arr(azimuth_start_deg)
    steps = arr([360.0 * i / num_views for i in range(num_views)])
    return start[..., None] + steps


def get_rays(c2w, fov_deg, height: int, width: int):
    """Ray origins and unit directions, each (..., H, W, 3) in world space, through pixel centres.

    The one ray function of the model stages (design §1, §3): SDS renders its views with it (square images:
    ``height == width``). c2w (..., 4, 4) in mvforge axes (OpenGL: +X right, +Y up, looking down -Z);
    ``fov_deg`` (...) or a scalar, in degrees, covers the larger image side, as ``cameras.intrinsics`` (so a
    world point on pixel (u, v)'s ray projects to (u + 0.5, v + 0.5) with ``cameras.project``). Row 0 is the top
    of the image. Tensors in: tensors out on c2w's device and dtype (the origins a broadcast view, not a copy);
    otherwise numpy float64.
    """
    xp, arr = _ns(c2w, fov_deg)
    c2w = arr(c2w)
    fov = arr(fov_deg)
    focal = 0.5 * max(height, width) / xp.tan(fov * (math.pi / 360))  # (...)
    v, u = (
        np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
        if xp is np
        else xp.meshgrid(
            xp.arange(height, dtype=c2w.dtype, device=c2w.device) + 0.5,
            xp.arange(width, dtype=c2w.dtype, device=c2w.device) + 0.5,
            indexing="ij",
        )
    )
    f = focal[..., None, None]
    x = (u - width / 2) / f
    y = -(v - height / 2) / f  # image rows go down, camera +Y goes up
    z = -xp.ones_like(x)
    cam = xp.stack([x, y, z], -1)  # (..., H, W, 3)
    rot = c2w[..., None, None, :3, :3]
    d = (rot @ cam[..., None])[..., 0]
    d = d / (xp.linalg.norm(d, axis=-1, keepdims=True) if xp is np else d.norm(dim=-1, keepdim=True))
    o = xp.broadcast_to(c2w[..., None, None, :3, 3], d.shape)
    return o, d
