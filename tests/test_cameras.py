import dataclasses
import math

import numpy as np
import pytest

from mvforge import cameras
from mvforge.cameras import OrbitSampling

# Golden values of design §3 (= MVDream get_camera(..., blender_coord=True)), distance 1.
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


@pytest.mark.parametrize("elev_azim", sorted(GOLDEN))
def test_orbit_c2w_golden(elev_azim):
    c2w = cameras.orbit_c2w(*elev_azim, distance=1.0)
    np.testing.assert_allclose(c2w, GOLDEN[elev_azim], atol=1e-4)
    assert cameras.is_rigid(c2w)


def test_camera_looks_at_origin_and_up_is_world_up():
    c2w = cameras.orbit_c2w(20, 130, 2.5)
    eye = c2w[:3, 3]
    forward = -c2w[:3, 2]  # cameras look down -Z
    np.testing.assert_allclose(forward, -eye / np.linalg.norm(eye), atol=1e-9)
    assert c2w[2, 1] > 0  # the image's up points to world +Z
    assert abs(c2w[2, 0]) < 1e-9  # no roll: the image's right stays horizontal


def test_project_origin_to_image_centre_and_axes():
    K = cameras.intrinsics(40.0, 64)
    c2w = cameras.orbit_c2w(0, 0, 3.0)  # on -Y looking at +Y: world +X is image right, +Z is image up
    np.testing.assert_allclose(cameras.project(np.zeros(3), c2w, K), [[32, 32]], atol=1e-9)
    (u, v) = cameras.project(np.array([0.1, 0, 0]), c2w, K)[0]
    assert u > 32 and abs(v - 32) < 1e-9
    (u, v) = cameras.project(np.array([0, 0, 0.1]), c2w, K)[0]
    assert v < 32 and abs(u - 32) < 1e-9


def test_intrinsics_independent_focal_formula():
    K = cameras.intrinsics(60.0, 256)
    assert K[0, 0] == pytest.approx(128 / math.tan(math.radians(30)))
    assert K[0, 0] == K[1, 1] and K[0, 2] == 128 and K[1, 2] == 128


def test_opencv_conversion_flips_y_and_z():
    c2w = cameras.orbit_c2w(10, 33, 2.0)
    cv = cameras.c2w_to_opencv(c2w)
    np.testing.assert_allclose(cv[:3, 0], c2w[:3, 0])
    np.testing.assert_allclose(cv[:3, 1], -c2w[:3, 1])
    np.testing.assert_allclose(cv[:3, 2], -c2w[:3, 2])
    np.testing.assert_allclose(cv[:3, 3], c2w[:3, 3])


def test_normalize_camera_matches_mvdream_and_does_not_mutate():
    c2w = cameras.orbit_c2w(15, 90, 2.7).astype(np.float32)
    before = c2w.copy()
    emb = cameras.normalize_camera(c2w)
    np.testing.assert_array_equal(c2w, before)
    assert emb.shape == (16,)
    expected = before.copy()
    expected[:3, 3] /= np.linalg.norm(expected[:3, 3])
    np.testing.assert_allclose(emb, expected.reshape(16), atol=1e-6)
    batch = cameras.normalize_camera(np.stack([c2w, c2w]))
    assert batch.shape == (2, 16)


def test_sample_orbits_ranges_and_reproducibility():
    s = OrbitSampling(views=32)
    a = cameras.sample_orbits(np.random.default_rng(7), s, orbits=2)
    b = cameras.sample_orbits(np.random.default_rng(7), s, orbits=2)
    assert a == b and len(a) == 64
    for orbit in (0, 1):
        views = [v for v in a if v.orbit == orbit]
        assert len({(v.elevation_deg, v.fov_deg, v.distance) for v in views}) == 1
        v = views[0]
        assert 0 <= v.elevation_deg <= 30 and 15 <= v.fov_deg <= 60
        base = s.frame_radius / math.sin(math.radians(v.fov_deg) / 2)
        assert 0.9 * base <= v.distance <= 1.1 * base
        azimuths = [x.azimuth_deg for x in views]
        np.testing.assert_allclose(np.diff(azimuths), 360 / 32)
    assert a[0].elevation_deg != a[32].elevation_deg


def test_default_framing_keeps_the_unit_cube_inside_the_image():
    """Every corner of [-0.5, 0.5]^3 projects inside the image for any sampled orbit (no border cuts)."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    s = OrbitSampling(views=8)
    rng = np.random.default_rng(3)
    for _ in range(50):
        for v in cameras.sample_orbits(rng, s):
            uv = cameras.project(corners, v.c2w, cameras.intrinsics(v.fov_deg, 64))
            assert uv.min() >= 0 and uv.max() <= 64


def test_sphere_directions_unbiased():
    d = cameras.random_sphere_directions(np.random.default_rng(0), 20000)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    # A uniform sphere has E[|x|] = 1/2 per axis; normalize(U[-1,1]^3) over-weights the cube's corners (~0.53).
    assert abs(np.abs(d).mean() - 0.5) < 0.01


def test_mvdream_framing_is_the_paper_rule():
    """framing = "mvdream": distance = 0.5 / tan(fov / 2) x jitter (paper §4.1, design §3)."""
    s = OrbitSampling(views=4, framing="mvdream")
    for v in cameras.sample_orbits(np.random.default_rng(5), s, orbits=3):
        jitter = v.distance * math.tan(math.radians(v.fov_deg) / 2) / 0.5
        assert 0.9 <= jitter <= 1.1
        # The centre-plane unit square spans resolution / jitter pixels.
        edge = np.array([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
        c2w = cameras.orbit_c2w(0.0, 0.0, v.distance)
        uv = cameras.project(edge, c2w, cameras.intrinsics(v.fov_deg, 256))
        assert uv[1, 0] - uv[0, 0] == pytest.approx(256 / jitter)
    with pytest.raises(ValueError, match="framing"):
        cameras.framing_distance(dataclasses.replace(s, framing="tight"), 30.0)
