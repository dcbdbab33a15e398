"""Mesh and turntable export of an SDS field (issue 14, design §2.6).

Mesh: marching cubes (PyMCubes) on the density sampled at the vertices of a grid over the field's box, the
largest connected component kept (floaters dropped), vertex colours = the field's albedo at the vertices, written
as ``mesh.glb`` and ``mesh.obj`` with trimesh. The field is Z up (mvforge's world, design §3); glTF requires +Y up,
so vertices are rotated by -90 deg about X ((x, y, z) -> (x, z, -y)) before writing. The OBJ gets the same Y-up
vertices: OBJ has no axis convention and the common viewers assume glTF's.

Turntable: frames of the field rendered albedo-lit (as the official evaluation renders are) from a camera
orbiting at a fixed elevation, written as GIF (imageio + pillow) and MP4 (imageio + pyav).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mvforge.fsutil import atomic_write_bytes
from mvforge.sds.config import ExportConfig

# Z-up (mvforge world) -> Y-up (glTF): rotate -90 deg about X, so +Z becomes +Y and +Y becomes -Z.
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

PROBE_RESOLUTION = 32
"""Cells per side of the coarse density probe that looks for a surface before the full marching-cubes grid
(33³ field evaluations instead of (mc_resolution + 1)³: 17M at the preset's 256). A surface thinner than a probe
cell (1/16 of the box side) that no probe vertex crosses is reported as no surface."""


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
    if cfg.keep_largest_component and len(mesh.faces):
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = max(parts, key=lambda m: len(m.faces))
    with torch.no_grad():
        pts = torch.as_tensor(mesh.vertices, dtype=torch.float32).to(device)
        albedo = torch.cat([albedo_fn(p) for p in pts.split(65536)]).float().cpu().numpy()
    rgba = np.concatenate([np.round(albedo.clip(0, 1) * 255), np.full((len(albedo), 1), 255)], axis=1)
    mesh.visual.vertex_colors = rgba.astype(np.uint8)
    return mesh


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
    """Write a Z-up mesh as ``mesh.glb`` and ``mesh.obj`` (both Y-up, vertex colours), atomically."""
    out_dir = Path(out_dir)
    y_up = to_y_up(mesh)
    glb, obj = out_dir / "mesh.glb", out_dir / "mesh.obj"
    atomic_write_bytes(glb, y_up.export(file_type="glb"))
    text = y_up.export(file_type="obj", include_color=True)
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
    atomic_write_bytes(out_dir / "turntable.gif", buf.getvalue())
    written.append(out_dir / "turntable.gif")
    if mp4:
        try:
            import av  # noqa: F401
        except ImportError:
            from mvforge.errors import UserError

            raise UserError(
                "turntable.mp4 needs pyav: pip install av (or set export_mesh.mp4=false)"
            ) from None
        buf = io.BytesIO()
        # yuv420p needs even sides; libx264 is in pyav's wheels.
        iio.imwrite(buf, frames, extension=".mp4", plugin="pyav", codec="libx264", fps=fps)
        atomic_write_bytes(out_dir / "turntable.mp4", buf.getvalue())
        written.append(out_dir / "turntable.mp4")
    return written
