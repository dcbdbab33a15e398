"""Procedural triangle meshes for the demo objects: lathe profiles, swept tubes, boxes, spheres, tori.

Conventions (checked by tests/assets): a :class:`Part` is a closed surface once coincident vertices are merged,
triangles wind counter-clockwise seen from outside (right-hand rule gives the outward normal) and each vertex
normal points outward. Coordinates are metres in the mvforge world (docs/design.md §3: right-handed, Z up,
front = -Y).

Determinism: regenerating the demo files must give byte-identical GLBs on any machine. numpy's float64
transcendental functions can dispatch to CPU-specific SIMD kernels (SVML on AVX-512 for several of them), and
``@`` goes through BLAS, whose use of FMA differs between CPUs. So angles go through Python's ``math`` (libm)
and every product is written out element-wise: numpy's element-wise + and * are exactly rounded IEEE
operations on every CPU (tests/assets re-generates with numpy's SIMD dispatch switched off and compares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Part:
    """One closed piece of surface: vertices with outward normals and CCW triangles."""

    positions: np.ndarray
    """(N, 3) float64 vertex positions in metres."""
    normals: np.ndarray
    """(N, 3) float64 unit outward vertex normals."""
    triangles: np.ndarray
    """(M, 3) int64 vertex indices, counter-clockwise seen from outside."""


def merge(parts: Sequence[Part]) -> Part:
    """One Part holding all of ``parts`` (indices offset; nothing welded)."""
    offsets = np.cumsum([0] + [len(p.positions) for p in parts[:-1]])
    return Part(
        np.concatenate([p.positions for p in parts]),
        np.concatenate([p.normals for p in parts]),
        np.concatenate([p.triangles + off for p, off in zip(parts, offsets, strict=True)]),
    )


def _normalize(v: np.ndarray) -> np.ndarray:
    length = np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2])
    return v / length[:, None]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])


def _mat_apply(m: Sequence[Sequence[float]], v: np.ndarray) -> np.ndarray:
    """``v @ m.T`` written out element-wise (no BLAS: see the module docstring)."""
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    return np.stack([m[i][0] * x + m[i][1] * y + m[i][2] * z for i in range(3)], axis=1)


def rotation(axis: str, angle_deg: float) -> tuple[Vec3, Vec3, Vec3]:
    """Right-handed rotation matrix about the x, y or z axis."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    if axis == "x":
        return ((1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c))
    if axis == "y":
        return ((c, 0.0, s), (0.0, 1.0, 0.0), (-s, 0.0, c))
    if axis == "z":
        return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))
    raise ValueError(f"rotation axis must be x, y or z, not {axis!r}")


def transform(
    part: Part,
    *,
    scale: Vec3 = (1.0, 1.0, 1.0),
    rotate: Sequence[Sequence[float]] | None = None,
    translate: Vec3 = (0.0, 0.0, 0.0),
) -> Part:
    """Scale (positive factors), then rotate, then translate; normals follow the inverse transpose."""
    if min(scale) <= 0:
        raise ValueError("transform: scale factors must be positive (a mirror would flip the winding)")
    sx, sy, sz = scale
    p = part.positions * np.array(scale)
    n = _normalize(part.normals * np.array((1.0 / sx, 1.0 / sy, 1.0 / sz)))
    if rotate is not None:
        p = _mat_apply(rotate, p)
        n = _mat_apply(rotate, n)
    return Part(p + np.array(translate), n, part.triangles.copy())


def _ring(count: int, start_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    angles = [math.radians(start_deg) + 2.0 * math.pi * j / count for j in range(count)]
    return np.array([math.cos(a) for a in angles]), np.array([math.sin(a) for a in angles])


def _profile_normals(points: Sequence[tuple[float, float]], closed: bool) -> list[tuple[float, float]]:
    """Outward (r, z) normals of a profile walked bottom to top around the outside of the solid.

    A segment going (dr, dz) has outward normal (dz, -dr); a point takes the mean of its two segments (smooth
    inside a strip). Points on the axis get an exactly vertical normal so a pole shades without a pinch.
    """
    n = len(points)
    seg = []
    for k in range(n if closed else n - 1):
        (r0, z0), (r1, z1) = points[k], points[(k + 1) % n]
        length = math.hypot(r1 - r0, z1 - z0)
        if length == 0:
            raise ValueError(f"profile has two equal consecutive points at {points[k]}")
        seg.append(((z1 - z0) / length, -(r1 - r0) / length))
    out = []
    for k in range(n):
        if closed:
            a, b = seg[k - 1], seg[k]
        else:
            a, b = seg[max(k - 1, 0)], seg[min(k, n - 2)]
        nr, nz = a[0] + b[0], a[1] + b[1]
        if points[k][0] == 0.0:
            nr, nz = 0.0, math.copysign(1.0, nz)
        length = math.hypot(nr, nz)
        out.append((nr / length, nz / length))
    return out


def lathe(strips: Sequence[Sequence[tuple[float, float]]], segments: int = 32, closed: bool = False) -> Part:
    """Surface of revolution about +Z of profile ``strips`` of (radius, z) points.

    Walk the profile bottom to top around the outside of the solid (e.g. axis -> rim -> up the side -> axis);
    each strip is smooth-shaded, and consecutive strips meet at a hard edge. A strip starting or ending on the
    axis closes there (a pole); ``closed`` joins the last point of a single strip back to its first (a torus).
    """
    cos_t, sin_t = _ring(segments)
    parts = []
    for strip in strips:
        pts = [(float(r), float(z)) for r, z in strip]
        if any(r < 0 for r, _ in pts):
            raise ValueError("lathe: radii must be >= 0")
        nrm = _profile_normals(pts, closed)
        r = np.array([p[0] for p in pts])[:, None]
        z = np.array([p[1] for p in pts])[:, None]
        nr = np.array([q[0] for q in nrm])[:, None]
        nz = np.array([q[1] for q in nrm])[:, None]
        ones = np.ones((1, segments))
        pos = np.stack([r * cos_t, r * sin_t, z * ones], axis=-1).reshape(-1, 3)
        nor = np.stack([nr * cos_t, nr * sin_t, nz * ones], axis=-1).reshape(-1, 3)
        tris = []
        n = len(pts)
        for k in range(n if closed else n - 1):
            k1 = (k + 1) % n
            for j in range(segments):
                j1 = (j + 1) % segments
                a, b, c, d = k * segments + j, k * segments + j1, k1 * segments + j1, k1 * segments + j
                if pts[k][0] > 0:
                    tris.append((a, b, c))
                if pts[k1][0] > 0:
                    tris.append((a, c, d))
        parts.append(Part(pos, nor, np.array(tris, dtype=np.int64)))
    return merge(parts)


def arc(
    center: tuple[float, float], radius: float, start_deg: float, end_deg: float, steps: int
) -> list[tuple[float, float]]:
    """Points of a circular arc in the (r, z) profile plane, angles from +r towards +z."""
    out = []
    for i in range(steps + 1):
        a = math.radians(start_deg + (end_deg - start_deg) * i / steps)
        # cos(90 deg) is 6e-17, not 0: snap it, or a pole lands just off the axis and leaves a pinhole.
        c, s = (0.0 if abs(v) < 1e-12 else v for v in (math.cos(a), math.sin(a)))
        out.append((center[0] + radius * c, center[1] + radius * s))
    return out


def cylinder(radius: float, z0: float, z1: float, segments: int = 32) -> Part:
    """Closed cylinder about +Z from z0 to z1, with hard edges at both caps."""
    return frustum(radius, radius, z0, z1, segments)


def frustum(r0: float, r1: float, z0: float, z1: float, segments: int = 32) -> Part:
    """Closed truncated cone about +Z: radius r0 at z0, r1 at z1 (r1 = 0 gives a cone)."""
    strips = [[(0.0, z0), (r0, z0)], [(r0, z0), (r1, z1)]]
    if r1 > 0:
        strips.append([(r1, z1), (0.0, z1)])
    return lathe(strips, segments)


def sphere(radius: float, center: Vec3 = (0.0, 0.0, 0.0), segments: int = 24, rings: int = 12) -> Part:
    """UV sphere (a lathed half circle from the south pole to the north pole)."""
    profile = arc((0.0, 0.0), radius, -90.0, 90.0, rings)
    profile[0], profile[-1] = (0.0, -radius), (0.0, radius)
    return transform(lathe([profile], segments), translate=center)


def capsule(radius: float, z0: float, z1: float, segments: int = 20, rings: int = 6) -> Part:
    """Cylinder about +Z from z0 to z1 with hemispherical ends (smooth throughout)."""
    bottom = arc((0.0, z0), radius, -90.0, 0.0, rings)
    top = arc((0.0, z1), radius, 0.0, 90.0, rings)
    bottom[0], top[-1] = (0.0, z0 - radius), (0.0, z1 + radius)
    return lathe([bottom + (top[1:] if z1 == z0 else top)], segments)


def torus(major: float, minor: float, segments: int = 40, sides: int = 16) -> Part:
    """Torus about +Z centred at the origin: tube radius ``minor`` around a circle of radius ``major``."""
    profile = arc((major, 0.0), minor, -90.0, 270.0, sides)[:-1]
    return lathe([profile], segments, closed=True)


def box(center: Vec3, size: Vec3) -> Part:
    """Axis-aligned box with flat faces (4 vertices per face, so edges stay sharp)."""
    c = np.array(center, dtype=np.float64)
    h = np.array(size, dtype=np.float64) / 2
    pos, nor, tris = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            n = np.zeros(3)
            n[axis] = sign
            # u x v = n, so corners taken (-,-), (+,-), (+,+), (-,+) run counter-clockwise about n.
            u = np.zeros(3)
            u[(axis + 1) % 3] = 1.0
            v = np.cross(n, u)
            base = len(pos)
            for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                pos.append(c + n * h + a * u * h + b * v * h)
                nor.append(n)
            tris += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return Part(np.array(pos), np.array(nor), np.array(tris, dtype=np.int64))


def tube(path: Sequence[Vec3], radius: float, sides: int = 12) -> Part:
    """A round tube swept along a 3D polyline, capped flat at both ends (rotation-minimising frames).

    Give bends several points: each ring is perpendicular to the mean of its two segments and not widened,
    so a sharp corner pinches the tube (and folds it inside out when the radius exceeds the segments).
    """
    p = np.array(path, dtype=np.float64)
    m = len(p)
    if m < 2:
        raise ValueError("tube: the path needs at least two points")
    tangents = np.empty_like(p)
    tangents[0], tangents[-1] = p[1] - p[0], p[-1] - p[-2]
    tangents[1:-1] = p[2:] - p[:-2]
    tangents = _normalize(tangents)
    # Initial normal: the world axis least aligned with the first tangent, made perpendicular to it.
    helper = np.zeros(3)
    helper[int(np.argmin(np.abs(tangents[0])))] = 1.0
    frames_n, frames_b = [], []
    normal = helper
    for t in tangents:
        # Parallel transport: drop the component along the new tangent (dot products written out, no BLAS).
        normal = normal - _dot(normal, t) * t
        normal = normal / math.sqrt(_dot(normal, normal))
        frames_n.append(normal)
        frames_b.append(np.cross(t, normal))
    cos_p, sin_p = _ring(sides)
    ring_dirs = [cos_p[:, None] * n + sin_p[:, None] * b for n, b in zip(frames_n, frames_b, strict=True)]
    pos = np.concatenate([p[i] + radius * ring_dirs[i] for i in range(m)])
    nor = np.concatenate(ring_dirs)
    tris = []
    for i in range(m - 1):
        for j in range(sides):
            j1 = (j + 1) % sides
            a, b, c, d = i * sides + j, i * sides + j1, (i + 1) * sides + j1, (i + 1) * sides + j
            tris += [(a, b, c), (a, c, d)]
    side = Part(pos, _normalize(nor), np.array(tris, dtype=np.int64))
    caps = []
    for i, outward, flip in ((0, -tangents[0], True), (m - 1, tangents[-1], False)):
        ring = p[i] + radius * ring_dirs[i]
        cap_pos = np.concatenate([p[i][None], ring])
        cap_nor = np.repeat(outward[None], sides + 1, axis=0)
        # (centre, j, j+1) faces along +tangent (the ring turns from N towards B); the start cap faces back.
        if flip:
            cap_tris = [(0, 1 + (j + 1) % sides, 1 + j) for j in range(sides)]
        else:
            cap_tris = [(0, 1 + j, 1 + (j + 1) % sides) for j in range(sides)]
        caps.append(Part(cap_pos, cap_nor, np.array(cap_tris, dtype=np.int64)))
    return merge([side, *caps])


def prism(polygon: Sequence[tuple[float, float]], thickness: float) -> Part:
    """A convex polygon in the XZ plane, given as (x, z) points, extruded symmetrically along Y (flat faces)."""
    pts = [(float(x), float(z)) for x, z in polygon]
    area2 = sum(
        pts[k][0] * pts[(k + 1) % len(pts)][1] - pts[(k + 1) % len(pts)][0] * pts[k][1]
        for k in range(len(pts))
    )
    if area2 < 0:
        pts = pts[::-1]  # walk counter-clockwise in (x, z): the fan (0, k, k+1) then faces -Y
    m, h = len(pts), thickness / 2
    parts = []
    for y, normal_y, fan in ((-h, -1.0, lambda k: (0, k, k + 1)), (h, 1.0, lambda k: (0, k + 1, k))):
        pos = np.array([(x, y, z) for x, z in pts])
        nor = np.repeat(np.array([[0.0, normal_y, 0.0]]), m, axis=0)
        parts.append(Part(pos, nor, np.array([fan(k) for k in range(1, m - 1)], dtype=np.int64)))
    for k in range(m):
        (x0, z0), (x1, z1) = pts[k], pts[(k + 1) % m]
        length = math.hypot(x1 - x0, z1 - z0)
        n = ((z1 - z0) / length, 0.0, -(x1 - x0) / length)  # right of the edge direction: outward when CCW
        pos = np.array([(x0, -h, z0), (x1, -h, z1), (x1, h, z1), (x0, h, z0)])
        parts.append(Part(pos, np.repeat(np.array([n]), 4, axis=0), np.array([(0, 3, 2), (0, 2, 1)])))
    return merge(parts)


def align_z(direction: Vec3) -> tuple[Vec3, Vec3, Vec3]:
    """Rotation taking +Z onto ``direction`` (Rodrigues' formula about Z x direction)."""
    length = math.sqrt(sum(c * c for c in direction))
    dx, dy, dz = (c / length for c in direction)
    vx, vy = -dy, dx  # Z x d; its z component is 0
    s2 = vx * vx + vy * vy
    if s2 < 1e-18:
        return rotation("x", 0.0 if dz > 0 else 180.0)
    k = (1.0 - dz) / s2
    # R = I + [v]x + [v]x^2 (1 - c) / s^2, with v = (vx, vy, 0) and c = dz.
    return (
        (1.0 - k * vy * vy, k * vx * vy, dx),
        (k * vx * vy, 1.0 - k * vx * vx, dy),
        (-dx, -dy, dz),
    )
