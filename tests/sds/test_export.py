"""Mesh and turntable export (docs/sds.md, "Export"): a density ball exports a closed mesh of the right radius,
the GLB loads back with +Y up, and vertex colours equal the albedo at the vertices."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from mvforge.errors import UserError
from mvforge.sds.config import ExportConfig
from mvforge.sds.export import PROBE_RESOLUTION, extract_mesh, remove_outliers, write_mesh, write_turntable

CENTRE = torch.tensor([0.0, 0.0, 0.3])  # +Z in the field: must come out as +Y in the GLB
R = 0.45


def density(p: torch.Tensor) -> torch.Tensor:
    # 100 at the centre falling linearly: the iso level 25 surface is the sphere of radius 0.75 * R / 0.75 = R
    return 100.0 * (1.0 - (p - CENTRE).norm(dim=-1) / (R / 0.75))


def albedo(p: torch.Tensor) -> torch.Tensor:
    return ((p + 1.0) / 2.0).clamp(0, 1)  # a colour that varies with position


def test_sphere_exports_watertight_mesh_of_the_right_radius_y_up_with_albedo_colours(tmp_path):
    # a floater with 2.4 % of the sphere's faces (188 of 7784): kept by the official outlier removal (it drops
    # components under 1 %), dropped by keep_largest_component
    def with_floater(p):
        return torch.maximum(
            density(p), 100.0 * (1.0 - (p - torch.tensor([0.8, 0.8, -0.8])).norm(dim=-1) / 0.1)
        )

    assert len(extract_mesh(with_floater, albedo, 1.0, ExportConfig(mc_resolution=64)).split()) == 2
    cfg = ExportConfig(mc_resolution=64, iso_level=25.0, keep_largest_component=True)
    mesh = extract_mesh(with_floater, albedo, 1.0, cfg)
    assert mesh.is_watertight
    dist = np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1)
    np.testing.assert_allclose(dist, R, atol=0.01)  # the floater is gone and the radius is right
    assert abs(mesh.volume - 4 / 3 * np.pi * R**3) < 0.01  # positive: outward-facing triangles
    glb, obj = write_mesh(mesh, tmp_path)
    loaded = trimesh.load(glb, force="mesh")
    assert loaded.is_watertight
    centre = loaded.vertices.mean(axis=0)
    np.testing.assert_allclose(centre, [0.0, 0.3, 0.0], atol=0.01)  # Z-up +0.3 -> Y-up +0.3
    # colours: the albedo of the vertex's Z-up position ((x, y, z)_Yup = (x, z, -y)_Zup)
    zup = np.stack([loaded.vertices[:, 0], -loaded.vertices[:, 2], loaded.vertices[:, 1]], axis=1)
    expected = albedo(torch.as_tensor(zup, dtype=torch.float32)).numpy() * 255
    colours = loaded.visual.vertex_colors[:, :3].astype(float)
    np.testing.assert_allclose(colours, expected, atol=1.01)
    obj_mesh = trimesh.load(obj, force="mesh")
    assert len(obj_mesh.faces) == len(loaded.faces)


def test_outlier_removal_drops_components_under_one_percent_of_the_largest_as_threestudio():
    """threestudio/models/mesh.py ``remove_outlier`` with geometry/base.py's default threshold 0.01: components with
    fewer than int(0.01 * faces of the largest) faces go, the others stay."""
    big = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces: threshold int(51.2) = 51
    medium = trimesh.creation.icosphere(subdivisions=2, radius=0.2).apply_translation([3, 0, 0])  # 320 faces
    small = trimesh.creation.icosphere(subdivisions=0, radius=0.1).apply_translation([0, 3, 0])  # 20 faces
    mesh = trimesh.util.concatenate([big, medium, small])
    kept = remove_outliers(mesh, 0.01)
    assert sorted(len(p.faces) for p in kept.split(only_watertight=False)) == [320, 5120]
    assert len(remove_outliers(mesh, 0.0).faces) == 5460  # 0 keeps everything
    assert len(remove_outliers(mesh, 0.01, keep_largest=True).faces) == 5120


def test_turntable_gif_and_mp4_decode_back(tmp_path):
    frames = np.zeros((6, 32, 32, 3), dtype=np.uint8)
    for i in range(6):
        frames[i, :, : 5 * (i + 1)] = 200
    paths = write_turntable(frames, tmp_path, fps=10)
    gif = iio.imread(paths[0], index=None)
    assert gif.shape[0] == 6 and gif.shape[1:3] == (32, 32)
    mp4 = iio.imread(paths[1], plugin="pyav", index=None)
    assert mp4.shape[0] == 6 and mp4.shape[1:3] == (32, 32)
    assert abs(float(mp4[5, 16, 2, 0]) - 200) < 20 and float(mp4[0, 16, 20, 0]) < 30


def test_marching_cubes_uses_the_configured_resolution_and_iso_level():
    res, iso = 20, 50.0  # density 50 at half the ball's 0.6 radius scale: the surface radius is 0.3
    cfg = ExportConfig(mc_resolution=res, iso_level=iso)

    def ball(p):
        return 100.0 * (1.0 - p.norm(dim=-1) / 0.6)

    mesh = extract_mesh(ball, albedo, 1.0, cfg)
    # marching cubes puts every vertex on an edge of the grid: two of its coordinates on the lattice 2/res
    on_lattice = np.isclose((mesh.vertices + 1.0) * res / 2.0 % 1.0, 0.0, atol=1e-4) | np.isclose(
        (mesh.vertices + 1.0) * res / 2.0 % 1.0, 1.0, atol=1e-4
    )
    assert (on_lattice.sum(axis=1) >= 2).all()
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 0.3, atol=0.01)


@pytest.mark.parametrize("value", [0.0, 80.0])
def test_no_surface_is_a_one_line_error_found_before_the_full_grid(value):
    evaluated = []

    def flat(p):  # an empty (0) or full (80) field: nothing crosses 25
        evaluated.append(len(p))
        return torch.full((len(p),), value)

    cfg = ExportConfig(mc_resolution=128, iso_level=25.0)
    with pytest.raises(UserError, match=r"no surface at density 25.0: .* spans .*export_mesh.iso_level") as e:
        extract_mesh(flat, albedo, 1.0, cfg)
    assert "\n" not in str(e.value)
    assert sum(evaluated) == (PROBE_RESOLUTION + 1) ** 3  # the probe only, not the 129³ grid


def test_uv_texture_bake_gives_the_albedo_at_the_vertices_through_the_glb(tmp_path):
    from mvforge.sds.export import bake_texture

    mesh = extract_mesh(density, albedo, 1.0, ExportConfig(mc_resolution=24, iso_level=25.0))
    textured = bake_texture(mesh, albedo, 256)
    glb, obj = write_mesh(textured, tmp_path)
    loaded = trimesh.load(glb, force="mesh")
    uv = loaded.visual.uv
    assert uv.shape == (len(loaded.vertices), 2) and (uv >= 0).all() and (uv <= 1).all()
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"), dtype=float)
    # the texel under each vertex's UV (row 0 is v = 1) against the albedo of its Z-up position
    size = image.shape[0]
    cols = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    rows = np.clip(((1 - uv[:, 1]) * size).astype(int), 0, size - 1)
    zup = np.stack([loaded.vertices[:, 0], -loaded.vertices[:, 2], loaded.vertices[:, 1]], axis=1)
    expected = albedo(torch.as_tensor(zup, dtype=torch.float32)).numpy() * 255
    # a texel spans 1/256 of the atlas: the albedo changes by ~1/255 per 0.01 of position
    np.testing.assert_allclose(image[rows, cols], expected, atol=6.0)
    # ... and nothing scales it: viewers multiply the texture by the factor / Kd (trimesh's default is 0.4).
    assert list(loaded.visual.material.baseColorFactor) == [255, 255, 255, 255]
    mtl = (tmp_path / "mesh.mtl").read_text()
    assert "Kd 1.0" in mtl and "Ks 0.0" in mtl and "mtllib mesh.mtl" in obj.read_text()
    assert len(trimesh.load(obj, force="mesh").faces) == len(textured.faces)
    assert abs(textured.area - mesh.area) < 1e-6 * mesh.area  # only zero-area slivers were dropped


@pytest.mark.parametrize(
    "key, value",
    [
        ("turntable_frames", 0),
        ("turntable_fps", 0),
        ("turntable_resolution", -1),
        ("texture_resolution", 0),
        ("mc_resolution", 3),
        ("iso_level", float("nan")),
    ],
)
def test_bad_export_settings_are_one_line_errors_before_the_run(key, value):
    from mvforge import config as config_mod
    from mvforge.errors import UserError
    from mvforge.sds.config import SDSConfig

    with pytest.raises(UserError, match=f"export_mesh.{key}"):
        config_mod.load(SDSConfig, None, [f"export_mesh.{key}={value}"])
