"""HDRI exposure: the mean radiance of an equirectangular map, and the strength that normalises it
(``lighting.exposure``).

Pure numpy, no bpy: the Blender child (``mvforge.render.blender_scene``) reads a map's pixels and calls these, and
the tests call them on synthetic arrays. Why it exists: the 8 maps in the bpy wheel span ~6x in mean radiance
(night 0.165 to interior 0.973), and at their raw exposure bright maps clip up to 80 % of an object's pixels
(docs/bench/render_speed.md, "HDRI exposure").
"""

from __future__ import annotations

import numpy as np

# Rec. 709 / sRGB luminance weights: Blender's scene-linear space is Linear Rec.709 by default, the space float
# images (.exr, .hdr) are loaded in.
LUMINANCE_WEIGHTS = (0.2126, 0.7152, 0.0722)


def mean_radiance(pixels: np.ndarray) -> float:
    """Mean luminance of an equirectangular environment map over the sphere, weighted by solid angle.

    ``pixels``: (H, W, C) float array, C >= 3 (RGB or RGBA; alpha is ignored), linear radiance, rows spanning
    latitude -90°..90° in either order (the weight is symmetric), columns spanning 360° of longitude. A row's
    pixels cover a solid angle proportional to cos(latitude) of the row's centre, so a bright pole counts for
    little and the horizon for most. A map of constant value v returns v (an object lit by it receives the
    irradiance π·v on every face). Returns a float >= 0.

    Raises ValueError for a wrong shape or a non-finite pixel (an .exr holding NaN/inf would make the
    normalised strength meaningless).
    """
    a = np.asarray(pixels)
    if a.ndim != 3 or a.shape[2] < 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an (H, W, C>=3) equirectangular map, got shape {a.shape}")
    rgb = a[..., :3].astype(np.float64)
    # Per row first: H*W*3 values reduce to H before the weighting (a 4k map is 25 M values).
    row_rgb = rgb.mean(axis=1)  # (H, 3)
    if not np.all(np.isfinite(row_rgb)):
        raise ValueError("the map holds non-finite values (NaN or inf)")
    row_lum = row_rgb @ np.asarray(LUMINANCE_WEIGHTS)
    h = a.shape[0]
    latitude = (np.arange(h) + 0.5) / h * np.pi - np.pi / 2
    weight = np.cos(latitude)
    return float(max(0.0, np.sum(row_lum * weight) / np.sum(weight)))


def normalized_strength(strength: float, target: float, radiance: float) -> float:
    """The Background strength that gives a map of mean radiance ``radiance`` the mean ``target`` x ``strength``.

    ``strength``: the per-object draw (``lighting.strength_min..strength_max``), kept as a factor so objects still
    vary; ``target``: ``lighting.exposure_target``, > 0. Raises ValueError when ``radiance`` is not > 0 (a black
    map cannot be brought to any exposure).
    """
    if not radiance > 0:
        raise ValueError(f"mean radiance {radiance} is not > 0: a black map cannot be normalised")
    return float(strength) * float(target) / float(radiance)
