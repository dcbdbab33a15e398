"""Batched cameras (numpy and torch) against the single-camera reference in mvforge.cameras (design §3)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from mvforge import cameras
from mvforge.models.camera_batch import camera_embedding, get_rays, orbit_c2w_batch, orthogonal_views

ELEV = np.array([15.0, 30.0, 0.0, -20.0, 15.0])
AZIM = np.array([0.0, 45.0, 90.0, 200.0, 90.0])


def test_orbit_and_embedding_equal_the_reference_in_numpy_and_torch():
    ref = np.stack([cameras.orbit_c2w(e, a, 1.7) for e, a in zip(ELEV, AZIM, strict=True)])
    np.testing.assert_allclose(orbit_c2w_batch(ELEV, AZIM, 1.7), ref, atol=1e-12)
    t = orbit_c2w_batch(torch.tensor(ELEV), torch.tensor(AZIM), 1.7)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), ref, atol=1e-12)
    # design §3's golden value: elevation 15, azimuth 90.
    golden = [[0, -0.2588, 0.9659, 0.9659], [1, 0, 0, 0], [0, 0.9659, 0.2588, 0.2588], [0, 0, 0, 1]]
    np.testing.assert_allclose(orbit_c2w_batch(15.0, 90.0), golden, atol=1e-4)
    emb = camera_embedding(ref)
    assert emb.shape == (5, 16) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, cameras.normalize_camera(ref))
    np.testing.assert_allclose(camera_embedding(t.float()).numpy(), cameras.normalize_camera(ref), atol=1e-6)
    before = ref.copy()
    camera_embedding(ref)
    np.testing.assert_array_equal(ref, before)  # never mutates its input


def test_orthogonal_views_broadcast_over_starts():
    np.testing.assert_array_equal(orthogonal_views(90.0), [90.0, 180.0, 270.0, 360.0])
    got = orthogonal_views(torch.tensor([0.0, 10.0]), num_views=4)
    assert got.shape == (2, 4) and torch.equal(got[1], torch.tensor([10.0, 100.0, 190.0, 280.0]))


def test_rays_pass_through_the_pixels_they_belong_to():
    c2w = np.stack([cameras.orbit_c2w(e, a, 2.0) for e, a in zip(ELEV[:2], AZIM[:2], strict=True)])
    h, w, fov = 6, 8, 40.0
    o, d = get_rays(c2w, fov, h, w)
    assert o.shape == d.shape == (2, h, w, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-12)
    K = cameras.intrinsics(fov, w, h)
    for cam in range(2):
        for row, col in [(0, 0), (2, 5), (5, 7)]:
            p = o[cam, row, col] + 3.0 * d[cam, row, col]
            np.testing.assert_allclose(
                cameras.project(p[None], c2w[cam], K)[0], [col + 0.5, row + 0.5], atol=1e-9
            )
    to, td = get_rays(torch.tensor(c2w), torch.tensor(fov), h, w)
    np.testing.assert_allclose(to.numpy(), o, atol=1e-12)
    np.testing.assert_allclose(td.numpy(), d, atol=1e-12)


def test_cameras_and_camera_batch_import_no_torch():
    """cameras.py is imported in every Blender child; camera_batch computes in torch only when given tensors."""
    code = (
        "import sys\nimport mvforge.cameras, mvforge.models.camera_batch, mvforge.models.resolve\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
