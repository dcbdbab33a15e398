"""Mesh and turntable export of an SDS field (docs/design.md §2.6, §10.8).

Mesh: marching cubes (PyMCubes) on the density sampled at the vertices of a grid over the field's box (threestudio
README's export recipe: ``isosurface_method=mc-cpu``, ``isosurface_resolution=256``), connected components with
fewer than 1 % of the largest one's faces dropped (threestudio's ``Mesh.remove_outlier`` with the class defaults
of ``threestudio/models/geometry/base.py``; docs/design.md §10.8), vertex colours = the field's albedo at the
vertices, written as ``mesh.glb`` and ``mesh.obj`` with trimesh. The field is Z up (mvforge's world,
docs/design.md §3); glTF requires +Y up, so vertices are rotated by -90 deg about X ((x, y, z) -> (x, z, -y))
before writing. The OBJ gets the same Y-up vertices: OBJ has no axis convention and the common viewers assume
glTF's.

Turntable: frames of the field rendered albedo-lit (as the official evaluation renders are) from a camera
orbiting at a fixed elevation (the official evaluation camera: elevation 15, distance 3.0, fov 40), written as GIF
(imageio + pillow) and MP4 (imageio + pyav).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mvforge.formats import sds_result as result_format
from mvforge.fsutil import atomic_write_bytes
from mvforge.sds.config import ExportConfig

# Z-up (mvforge world) -> Y-up (glTF): rotate -90 deg about X, so +Z becomes +Y and +Y becomes -Z.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

PROBE_RESOLUTION = 32
"""Cells per side of the coarse density probe that looks for a surface before the full marching-cubes grid
(33³ field evaluations instead of (mc_resolution + 1)³: 17M at the preset's 256). A surface thinner than a probe
cell (1/32 of the box side) that no probe vertex crosses is reported as no surface."""


def sample_grid(
    fn: Callable[[torch.Tensor], torch.Tensor], radius: float, resolution: int, chunk: int = 65536
):
    """``fn`` at the (resolution+1)^3 vertices of a grid over [-radius, radius]^3 -> (R+1, R+1, R+1) numpy.

    Index order [i, j, k] is (x, y, z). Evaluated without gradients in chunks of ``chunk`` points.
    """
    lin = torch.linspace(-radius, radius, resolution + 1)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    out = []
    with torch.no_grad():
        for part in pts.split(chunk):
            out.append(fn(part).detach().float().cpu())
    return torch.cat(out).reshape(resolution + 1, resolution + 1, resolution + 1).numpy()


def extract_mesh(
    density_fn: Callable[[torch.Tensor], torch.Tensor],
    albedo_fn: Callable[[torch.Tensor], torch.Tensor],
    radius: float,
    cfg: ExportConfig,
    device: torch.device | str = "cpu",
):
    """A ``trimesh.Trimesh`` in the field's Z-up world with per-vertex colours (RGBA uint8) from ``albedo_fn``.

    density_fn: (P, 3) world points -> (P,) density; albedo_fn: (P, 3) -> (P, 3) in [0, 1]. The iso level
    is ``cfg.iso_level``, the grid ``cfg.mc_resolution`` cells per side. Raises UserError when no surface
    crosses the level (the field is empty or full): found on a ``PROBE_RESOLUTION`` probe before the full grid
    is sampled, so an empty field costs seconds, not the full grid's minutes.
    """
    import mcubes
    import trimesh

    def on_device(fn):
        return lambda p: fn(p.to(device))

    probe_resolution = min(cfg.mc_resolution, PROBE_RESOLUTION)
    grid = sample_grid(on_device(density_fn), radius, probe_resolution)
    _check_surface(grid, cfg.iso_level, probe_resolution)
    if cfg.mc_resolution != probe_resolution:
        grid = sample_grid(on_device(density_fn), radius, cfg.mc_resolution)
        _check_surface(grid, cfg.iso_level, cfg.mc_resolution)
    verts, faces = mcubes.marching_cubes(grid, cfg.iso_level)
    verts = verts / cfg.mc_resolution * 2.0 * radius - radius  # grid index -> world
    # PyMCubes winds faces outwards (towards lower values) for a density that is high inside: kept as is.
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    mesh = remove_outliers(mesh, cfg.outlier_faces_fraction, cfg.keep_largest_component)
    with torch.no_grad():
        pts = torch.as_tensor(mesh.vertices, dtype=torch.float32).to(device)
        albedo = torch.cat([albedo_fn(p) for p in pts.split(65536)]).float().cpu().numpy()
    rgba = np.concatenate([np.round(albedo.clip(0, 1) * 255), np.full((len(albedo), 1), 255)], axis=1)
    mesh.visual.vertex_colors = rgba.astype(np.uint8)
    return mesh


def remove_outliers(mesh, faces_fraction: float, keep_largest: bool = False):
    """``mesh`` without its small connected components (trimesh ``split``, faces connected through edges).

    threestudio's ``Mesh.remove_outlier`` (``threestudio/models/mesh.py``, a float threshold): drop every
    component with fewer than ``int(faces_fraction * faces of the largest component)`` faces; 0 keeps all.
    ``keep_largest`` (mvforge) keeps the largest component only. Returns ``mesh`` itself when nothing is dropped.
    """
    import trimesh

    if not len(mesh.faces) or (faces_fraction <= 0 and not keep_largest):
        return mesh
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    if keep_largest:
        return max(parts, key=lambda m: len(m.faces))
    threshold = int(max(len(p.faces) for p in parts) * faces_fraction)
    kept = [p for p in parts if len(p.faces) >= threshold]
    if len(kept) == len(parts):
        return mesh
    return kept[0] if len(kept) == 1 else trimesh.util.concatenate(kept)


def bake_texture(mesh, albedo_fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, device="cpu"):
    """A copy of ``mesh`` (Z-up trimesh) with a UV atlas (xatlas) and the albedo baked into a texture.

    xatlas cuts the mesh into charts and packs them into [0, 1]²; each texel inside a chart triangle gets the
    albedo of the 3D point at its centre (barycentric interpolation of the triangle's corners). Texels outside
    every chart take the nearest chart texel's colour over a few dilation passes, so bilinear lookups at chart
    edges do not bleed the background in. Returns a trimesh with ``TextureVisuals`` (uv (V, 2), an RGB PIL image
    of ``resolution``² pixels); vertices on chart seams are duplicated by xatlas. Needs the xatlas package.
    """
    import trimesh
    import xatlas
    from PIL import Image, ImageDraw

    # xatlas leaves near-zero-area slivers (marching cubes makes them where the surface grazes a grid corner)
    # out of every chart, at uv (0, 0): drop triangles thinner than 1e-3 of the median edge
    mesh = mesh.copy()
    mesh.update_faces(mesh.nondegenerate_faces(height=1e-3 * float(np.median(mesh.edges_unique_length))))
    mesh.remove_unreferenced_vertices()
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding = resolution, 2  # 2 texels between charts: room for the dilation below
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, faces, uv = atlas[0]
    verts = np.asarray(mesh.vertices)[vmap]
    # 1. which face covers each texel: rasterise the UV triangles with their index + 1 (0 = no face)
    size = resolution
    px = uv * size  # texel (i, j) covers [i, i + 1) x [j, j + 1); row 0 of the image is v = 1 (glTF's flip)
    ids = Image.new("I", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    for f, tri in enumerate(px[faces]):
        draw.polygon([(x, size - y) for x, y in tri], fill=f + 1)
    face_of = np.asarray(ids, dtype=np.int64) - 1  # (H, W)
    rows, cols = np.nonzero(face_of >= 0)
    f = face_of[rows, cols]
    # 2. barycentric coordinates of the texel centres in their UV triangle -> 3D points -> albedo
    centre = np.stack([cols + 0.5, size - (rows + 0.5)], axis=1)
    a, b, c = px[faces[f, 0]], px[faces[f, 1]], px[faces[f, 2]]
    v0, v1, v2 = b - a, c - a, centre - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    w1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    w2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.clip(np.stack([1 - w1 - w2, w1, w2], axis=1), 0.0, 1.0)
    bary /= bary.sum(axis=1, keepdims=True)
    points = np.einsum("nk,nkd->nd", bary, verts[faces[f]])
    with torch.no_grad():
        pts = torch.as_tensor(points, dtype=torch.float32).to(device)
        colour = torch.cat([albedo_fn(p).float().cpu() for p in pts.split(65536)]).numpy()
    texture = np.zeros((size, size, 3), dtype=np.float32)
    texture[rows, cols] = colour.clip(0.0, 1.0)
    # 3. dilate the charts by a few texels (the texture is sampled bilinearly at their edges)
    filled = face_of >= 0
    for _ in range(4):
        grown, colour_sum, count = filled.copy(), np.zeros_like(texture), np.zeros((size, size, 1))
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            shifted = np.roll(filled, (dy, dx), axis=(0, 1))
            add = shifted & ~filled
            colour_sum[add] += np.roll(texture, (dy, dx), axis=(0, 1))[add]
            count[add] += 1
            grown |= shifted
        new = grown & ~filled
        texture[new] = colour_sum[new] / count[new]
        filled = grown
    image = Image.fromarray(np.round(texture * 255).astype(np.uint8), mode="RGB")
    # trimesh's default material scales the texture by 0.4 (glTF baseColorFactor, OBJ Kd) and adds specular:
    # viewers would show the albedo at 40 %. White diffuse, no specular: the texture is the colour.
    material = trimesh.visual.material.SimpleMaterial(
        image=image, diffuse=(255, 255, 255, 255), ambient=(255, 255, 255, 255), specular=(0, 0, 0, 255)
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices=verts, faces=faces, visual=visual, process=False)


def _check_surface(grid: np.ndarray, iso_level: float, resolution: int) -> None:
    from mvforge.errors import UserError

    if not (grid.min() < iso_level < grid.max()):
        raise UserError(
            f"no surface at density {iso_level}: the field's density spans {grid.min():.3g}..{grid.max():.3g} on "
            f"a {resolution}³ grid; re-run with --set export_mesh.iso_level=<a value inside it> (the run resumes "
            "at its last step and only exports)"
        )


def to_y_up(mesh):
    """Copy of a Z-up trimesh rotated to glTF's Y-up frame (colours kept)."""
    out = mesh.copy()
    transform = np.eye(4)
    transform[:3, :3] = Z_UP_TO_Y_UP
    out.apply_transform(transform)
    return out


def write_mesh(mesh, out_dir: str | Path) -> tuple[Path, Path]:
    """Write a Z-up mesh as ``mesh.glb`` and ``mesh.obj`` (both Y-up), atomically: vertex colours, or for a
    textured mesh (:func:`bake_texture`) UVs with the texture embedded in the GLB and written next to the OBJ
    (``mesh.mtl`` + its PNG)."""
    import trimesh
    from trimesh.exchange.obj import export_obj

    out_dir = Path(out_dir)
    y_up = to_y_up(mesh)
    glb, obj = out_dir / result_format.MESH_GLB, out_dir / result_format.MESH_OBJ
    atomic_write_bytes(glb, y_up.export(file_type="glb"))
    if isinstance(y_up.visual, trimesh.visual.TextureVisuals):
        text, files = export_obj(
            y_up, include_texture=True, return_texture=True, mtl_name=result_format.MESH_MTL
        )
        for name, data in files.items():
            atomic_write_bytes(out_dir / name, data)
    else:
        text = export_obj(y_up, include_color=True)
    atomic_write_bytes(obj, text.encode("utf-8") if isinstance(text, str) else text)
    return glb, obj


def write_turntable(frames: np.ndarray, out_dir: str | Path, fps: int, mp4: bool = True) -> list[Path]:
    """frames (F, H, W, 3) uint8 -> ``turntable.gif`` (+ ``turntable.mp4`` via pyav), written atomically.

    Raises UserError when mp4 is asked for and pyav is not installed.
    """
    import imageio.v3 as iio

    out_dir = Path(out_dir)
    written = []
    buf = io.BytesIO()
    iio.imwrite(buf, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    atomic_write_bytes(out_dir / result_format.TURNTABLE_GIF, buf.getvalue())
    written.append(out_dir / result_format.TURNTABLE_GIF)
    if mp4:
        try:
            import av  # noqa: F401
        except ImportError:
            from mvforge.errors import UserError

            raise UserError(
                f"{result_format.TURNTABLE_MP4} needs pyav: pip install av (or set export_mesh.mp4=false)"
            ) from None
        buf = io.BytesIO()
        # yuv420p needs even sides; libx264 is in pyav's wheels.
        iio.imwrite(buf, frames, extension=".mp4", plugin="pyav", codec="libx264", fps=fps)
        atomic_write_bytes(out_dir / result_format.TURNTABLE_MP4, buf.getvalue())
        written.append(out_dir / result_format.TURNTABLE_MP4)
    return written
