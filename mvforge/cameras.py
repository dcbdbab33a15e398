"""The one camera convention of mvforge (docs/design.md §3). numpy only: used by render, shards, train and
sds.

World: Blender's, right-handed, Z up; objects are normalised into the cube [-0.5, 0.5]^3 at the origin.
Camera: OpenGL/Blender axes (+X right, +Y up, looking down -Z). A pose is a 4x4 camera-to-world matrix
(``c2w``). A Blender camera object's ``matrix_world`` *is* this c2w: no axis flips between bpy and mvforge.

Orbit: azimuth 0 deg puts the camera on -Y (Blender's "front" view), 90 deg on +X; elevation is measured above
the XY plane. This is MVDream's ``get_camera(..., blender_coord=True)`` (MVDream repo, camera_utils.py).

Pixels: pixel (i, j) covers [j, j+1) x [i, i+1), so the principal point of a W x H image is (W/2, H/2) and
a point projects to continuous coordinates ``(u, v) = K @ (x, y, z) / z`` in OpenCV camera axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

WORLD_UP = np.array([0.0, 0.0, 1.0])

# OpenGL (x right, y up, -z forward) -> OpenCV (x right, y down, +z forward): flip Y and Z camera axes.
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def orbit_position(elevation_deg: float, azimuth_deg: float, distance: float) -> np.ndarray:
    """World position of a camera on the orbit: azimuth 0 at -Y, 90 at +X, elevation above XY."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    return distance * np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """c2w (OpenGL axes) of a camera at ``eye`` looking at ``target`` with ``up`` projected into its image."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    back = eye - target  # +Z of the camera points away from what it looks at
    norm = np.linalg.norm(back)
    if norm == 0:
        raise ValueError("look_at: eye and target coincide")
    back /= norm
    right = _cross3(np.asarray(up, dtype=np.float64), back)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: view direction is parallel to the up vector (elevation of +-90 deg)")
    right /= np.linalg.norm(right)
    true_up = _cross3(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w


def _cross3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x b of two 3-vectors: np.cross's own formula (same bits), without its axis handling, which made
    look_at the main cost of planning 10⁶ objects (32 views each)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def orbit_c2w(elevation_deg: float, azimuth_deg: float, distance: float = 1.0) -> np.ndarray:
    """c2w of an orbit camera looking at the origin (MVDream ``get_camera`` with ``blender_coord=True``)."""
    return look_at(orbit_position(elevation_deg, azimuth_deg, distance))


def intrinsics(fov_deg: float, width: int, height: int | None = None) -> np.ndarray:
    """3x3 pinhole K (OpenCV axes) for a camera whose fov covers the larger image side.

    Blender's sensor fit AUTO applies the fov to the larger side; renders here are square, so the vertical and
    horizontal fov are equal (docs/design.md §3).
    """
    height = width if height is None else height
    focal = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def c2w_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """c2w in OpenCV camera axes (x right, y down, z forward), for external tools (COLMAP, nerfstudio...)."""
    return np.asarray(c2w, dtype=np.float64) @ GL_TO_CV


def project(points: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates (N, 2) of world points (N, 3) seen by a camera (c2w in mvforge axes, K in OpenCV)."""
    w2c = np.linalg.inv(c2w_to_opencv(c2w))
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    cam = (w2c[:3, :3] @ pts.T).T + w2c[:3, 3]
    uvw = (K @ cam.T).T
    return uvw[:, :2] / uvw[:, 2:3]


def normalize_camera(c2w: np.ndarray) -> np.ndarray:
    """MVDream camera conditioning: translation scaled to unit length, 4x4 flattened row-major to 16 values.

    Accepts (4, 4) or (..., 4, 4); never mutates the caller's array.
    """
    c2w = np.array(c2w, dtype=np.float32, copy=True)
    t = c2w[..., :3, 3]
    norm = np.linalg.norm(t, axis=-1, keepdims=True)
    c2w[..., :3, 3] = t / np.where(norm == 0, 1.0, norm)
    return c2w.reshape(*c2w.shape[:-2], 16)


def is_rigid(c2w: np.ndarray, atol: float = 1e-4) -> bool:
    """True when the rotation part is orthonormal with det +1 and the last row is [0, 0, 0, 1]."""
    m = np.asarray(c2w, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        return False
    r = m[:3, :3]
    return (
        np.allclose(r @ r.T, np.eye(3), atol=atol)
        and abs(np.linalg.det(r) - 1.0) < atol
        and np.allclose(m[3], [0, 0, 0, 1], atol=atol)
    )


@dataclass(frozen=True)
class OrbitSampling:
    """How the cameras of one render orbit are drawn (paper §4.1 and the MVDream authors' answers)."""

    views: int = 32
    """Azimuths per orbit, evenly spaced over 360 deg (the paper renders 32)."""
    elevation_min_deg: float = 0.0
    """Lower bound of the orbit's elevation, drawn once per orbit (paper: U[0, 30])."""
    elevation_max_deg: float = 30.0
    """Upper bound of the orbit's elevation."""
    fov_min_deg: float = 15.0
    """Lower bound of the fov, vertical = horizontal, drawn once per orbit (paper: U[15, 60])."""
    fov_max_deg: float = 60.0
    """Upper bound of the fov."""
    framing: Literal["mvdream", "fit"] = "fit"
    """How far the camera stands (docs/design.md §3), recorded in cameras.json:

    - ``"mvdream"``: the paper's rule (arXiv 2308.16512 §4.1 as reported by a secondary source, docs/design.md
      §3, §10.11):
      distance = 0.5 / tan(fov / 2) x jitter. At jitter 1 the unit square on the centre plane spans the whole
      image: the object fills the frame and its near corners may be cut. This reproduces the paper; MVDream's
      own SDS samples cameras at about the same ratio (about 10% tighter: [0.8, 1.0] / tan(fov / 2) around a
      radius-1 field), so a model trained on ``fit`` renders sees objects half the size it is queried at.
    - ``"fit"``: distance = frame_radius / sin(fov / 2) x jitter: the sphere of radius ``frame_radius`` stays
      inside the view cone, so nothing is ever cut and objects fill about half the frame."""
    frame_radius: float = 0.9623
    """``fit`` framing only: radius of the sphere about the origin that the view cone is fitted to. Default
    sqrt(3)/2 / 0.9: the circumsphere of the unit cube stays inside the image even at the smallest jitter."""
    distance_jitter_min: float = 0.9
    """Lower bound of the distance jitter factor."""
    distance_jitter_max: float = 1.1
    """Upper bound of the distance jitter factor."""
    azimuth_start_deg: float = 0.0
    """Azimuth of view 0; the others follow at +360/views steps."""
    random_azimuth_start: bool = False
    """Draw the start azimuth uniformly per orbit instead of using ``azimuth_start_deg``."""

    def __post_init__(self) -> None:
        from mvforge.errors import UserError

        if self.views < 1:
            raise UserError(f"--views must be at least 1, got {self.views}")
        if not self.elevation_min_deg <= self.elevation_max_deg or not -90 <= self.elevation_min_deg <= 90:
            raise UserError("cameras.elevation_min_deg <= elevation_max_deg, both in [-90, 90] degrees")
        if not 0 < self.fov_min_deg <= self.fov_max_deg < 180:
            raise UserError("cameras.fov_min_deg <= fov_max_deg, both in (0, 180) degrees")
        if not 0 < self.distance_jitter_min <= self.distance_jitter_max:
            raise UserError("cameras.distance_jitter_min <= distance_jitter_max, both > 0")


@dataclass(frozen=True)
class View:
    """One rendered view: where the camera is and how it sees."""

    index: int
    orbit: int
    elevation_deg: float
    azimuth_deg: float
    fov_deg: float
    distance: float

    @property
    def c2w(self) -> np.ndarray:
        return orbit_c2w(self.elevation_deg, self.azimuth_deg, self.distance)


def sample_orbits(rng: np.random.Generator, sampling: OrbitSampling, orbits: int = 1) -> list[View]:
    """Views of ``orbits`` orbits: per orbit one elevation, one fov and one distance; ``views`` azimuths each.

    Deterministic given the generator state: seeding it per object makes re-renders reproduce the cameras.
    """
    if sampling.views < 1 or orbits < 1:
        raise ValueError("views and orbits must be >= 1")
    out: list[View] = []
    for orbit in range(orbits):
        elevation = float(rng.uniform(sampling.elevation_min_deg, sampling.elevation_max_deg))
        fov = float(rng.uniform(sampling.fov_min_deg, sampling.fov_max_deg))
        jitter = float(rng.uniform(sampling.distance_jitter_min, sampling.distance_jitter_max))
        start = (
            float(rng.uniform(0.0, 360.0)) if sampling.random_azimuth_start else sampling.azimuth_start_deg
        )
        distance = framing_distance(sampling, fov) * jitter
        for k in range(sampling.views):
            azimuth = (start + 360.0 * k / sampling.views) % 360.0
            out.append(View(len(out), orbit, elevation, azimuth, fov, distance))
    return out


def framing_distance(sampling: OrbitSampling, fov_deg: float) -> float:
    """Camera distance before jitter for ``fov_deg`` under ``sampling.framing`` (see ``OrbitSampling.framing``).

    Raises ValueError for an unknown framing (the config layer checks the literal before this is reached).
    """
    half = math.radians(fov_deg) / 2
    if sampling.framing == "mvdream":
        return 0.5 / math.tan(half)
    if sampling.framing == "fit":
        return sampling.frame_radius / math.sin(half)
    raise ValueError(f"unknown framing {sampling.framing!r}; use 'mvdream' or 'fit'")


def random_sphere_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform unit vectors (n, 3): normalised Gaussians (never normalize(U[-1,1]^3), which biases corners)."""
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)
