"""Camera sampler (design §3 golden values, §10.2 ranges) and timestep annealing (paper §3.2, design §10.6).
The per-view light and the official elevation rule against the official code: tests/sds/test_official.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mvforge import cameras
from mvforge.models.camera_batch import get_rays
from mvforge.sds.anneal import linear_ramp, timestep_range
from mvforge.sds.cameras import orbit_cameras, sample_cameras
from mvforge.sds.config import CameraConfig

# design §3 golden values (distance 1), shared with tests/test_cameras.py of the render stage
GOLDEN = {
    (15, 0): [[1, 0, 0, 0], [0, 0.2588, -0.9659, -0.9659], [0, 0.9659, 0.2588, 0.2588], [0, 0, 0, 1]],
    (15, 90): [[0, -0.2588, 0.9659, 0.9659], [1, 0, 0, 0], [0, 0.9659, 0.2588, 0.2588], [0, 0, 0, 1]],
    (30, 45): [
        [0.7071, -0.3536, 0.6124, 0.6124],
        [0.7071, 0.3536, -0.6124, -0.6124],
        [0, 0.866, 0.5, 0.5],
        [0, 0, 0, 1],
    ],
}


@pytest.mark.parametrize(("elev", "azim"), list(GOLDEN))
def test_orbit_cameras_match_design_golden_values(elev, azim):
    cams = orbit_cameras(elev, [azim], fov_deg=40.0, distance=1.0)
    np.testing.assert_allclose(cams.c2w[0].numpy(), GOLDEN[(elev, azim)], atol=1e-4)
    np.testing.assert_allclose(
        cams.embedding[0].numpy(), np.asarray(GOLDEN[(elev, azim)]).reshape(16), atol=1e-4
    )


def test_sampled_groups_share_elevation_fov_distance_light_distance_and_step_azimuth_by_90():
    cfg = CameraConfig()
    cams = sample_cameras(np.random.default_rng(0), cfg, groups=200)
    n = cfg.n_view
    for name in ("elevation_deg", "fov_deg", "distance"):
        v = getattr(cams, name).reshape(-1, n)
        assert torch.all(v == v[:, :1]), name
    light_distance = cams.light_position.norm(dim=-1).reshape(-1, n)
    torch.testing.assert_close(light_distance, light_distance[:, :1].expand(-1, n))
    light = cams.light_position.reshape(-1, n, 3)
    assert not torch.all(light == light[:, :1])  # one light per view (tests/sds/test_official.py)
    az = cams.azimuth_deg.reshape(-1, n).double()
    steps = (az[:, 1:] - az[:, :-1]) % 360
    np.testing.assert_allclose(steps.numpy(), 90.0, atol=1e-3)
    # official ranges (design §10.2)
    elev, fov, dist = cams.elevation_deg, cams.fov_deg, cams.distance
    assert elev.min() >= 0 and elev.max() <= 30
    assert fov.min() >= 15 and fov.max() <= 60
    rel = dist * torch.tan(torch.deg2rad(fov) / 2)
    assert rel.min() >= 0.8 - 1e-5 and rel.max() <= 1.0 + 1e-5
    ld = cams.light_position.norm(dim=-1)
    assert ld.min() >= 0.8 - 1e-5 and ld.max() <= 1.5 + 1e-5
    # every pose is the mvforge.cameras pose of its angles, and the embedding its normalize_camera
    for i in range(0, 40, 7):
        ref = cameras.orbit_c2w(float(elev[i]), float(cams.azimuth_deg[i]), float(dist[i]))
        np.testing.assert_allclose(cams.c2w[i].numpy(), ref, atol=1e-5)
        np.testing.assert_allclose(cams.embedding[i].numpy(), cameras.normalize_camera(ref), atol=1e-6)


def test_elevation_sphere_uniform_setting_is_a_half_uniform_half_sphere_mixture():
    """``elevation_sampling = "sphere_uniform"`` (mvforge's alternative to the official quirk): the sphere half is
    area-uniform over the whole [0, 30] range."""
    cfg = CameraConfig(elevation_sampling="sphere_uniform")
    rng = np.random.default_rng(1)
    elev = np.array([float(sample_cameras(rng, cfg, groups=1).elevation_deg[0]) for _ in range(3000)])
    # mixture mean: 0.5 * 15 + 0.5 * E[asin(U[0, sin 30])] in degrees
    s = math.sin(math.radians(30))
    sphere_mean = math.degrees((s * math.asin(s) + math.sqrt(1 - s * s) - 1) / s)
    expected = 0.5 * 15.0 + 0.5 * sphere_mean
    assert abs(elev.mean() - expected) < 0.4
    assert sphere_mean < 15.0  # the sphere half pulls the mean down: both halves are present
    # above asin(1/3) = 19.47 deg: 0.5 * (30 - 19.47) / 30 + 0.5 * (0.5 - 1/3) / 0.5 = 0.342 (official rule: 0.176)
    assert abs((elev > math.degrees(math.asin(1 / 3))).mean() - 0.342) < 0.03


def test_sampling_is_deterministic_given_the_generator():
    a = sample_cameras(np.random.default_rng(7), CameraConfig(), groups=2)
    b = sample_cameras(np.random.default_rng(7), CameraConfig(), groups=2)
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.light_position, b.light_position)


def test_centre_ray_looks_at_the_origin_and_corner_rays_span_the_fov():
    cams = orbit_cameras(20.0, [30.0], fov_deg=50.0, distance=2.0)
    o, d = get_rays(cams.c2w, cams.fov_deg, 64, 64)
    centre = (d[0, 31, 31] + d[0, 32, 32] + d[0, 31, 32] + d[0, 32, 31]) / 4
    np.testing.assert_allclose((centre / centre.norm()).numpy(), (-o[0, 0, 0] / 2.0).numpy(), atol=1e-5)
    # top row is +Y of the camera (design §3): its rays point higher than the bottom row's
    assert d[0, 0, 32, 2] > d[0, 63, 32, 2]
    # angle between the middle-left and middle-right edge rays ~ fov (pixel centres: slightly less)
    left = (d[0, 31, 0] + d[0, 32, 0]) / 2
    right = (d[0, 31, 63] + d[0, 32, 63]) / 2
    ang = math.degrees(math.acos(float((left / left.norm()) @ (right / right.norm()))))
    inner = 2 * math.degrees(math.atan(math.tan(math.radians(25)) * 63 / 64))
    assert abs(ang - inner) < 0.05


def test_timestep_annealing_end_points_and_midpoint():
    T = 1000
    assert timestep_range(0, T) == (980, 980)
    assert timestep_range(4000, T) == (int(T * 0.5), int(T * 0.74))  # midpoint of 0.98->0.02 and 0.98->0.50
    assert timestep_range(8000, T) == (20, 500)
    assert timestep_range(20000, T) == (20, 500)  # constant after the anneal
    assert linear_ramp(10.0, 1000.0, 2500, 5000) == pytest.approx(505.0)
    with pytest.raises(ValueError):
        timestep_range(0, T, min_step_percent=(0.9, 0.9), max_step_percent=(0.5, 0.5))
