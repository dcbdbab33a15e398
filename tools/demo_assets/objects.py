"""The demo objects: twelve everyday things modelled from primitives, in metres, standing on z = 0, front = -Y.

Each builder returns a :class:`Model` (parts grouped by material). Sizes are roughly real-world so captions like
"a mug" and "a bench" make sense side by side; the renderer normalises every object into the unit cube anyway.
Parts that touch overlap by a millimetre or two instead of sharing a face: coplanar faces flicker in renders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tools.demo_assets.gltf import Material, srgb
from tools.demo_assets.mesh import (
    Part,
    align_z,
    arc,
    box,
    capsule,
    cylinder,
    frustum,
    lathe,
    merge,
    prism,
    rotation,
    sphere,
    torus,
    transform,
    tube,
)


class Model:
    """Parts grouped by material, in insertion order (one glTF primitive per material)."""

    def __init__(self) -> None:
        self._groups: dict[str, tuple[Material, list[Part]]] = {}

    def add(self, material: Material, *parts: Part) -> None:
        known = self._groups.get(material.name)
        if known is not None and known[0] != material:
            raise ValueError(f"two different materials are both named {material.name!r}")
        self._groups.setdefault(material.name, (material, []))[1].extend(parts)

    def primitives(self) -> list[tuple[Material, Part]]:
        return [(mat, merge(parts)) for mat, parts in self._groups.values()]


@dataclass(frozen=True)
class DemoSpec:
    """One demo object: its uid (a file stem and webdataset key, so no dots), caption and builder."""

    uid: str
    caption: str
    build: Callable[[], Model]


def _mat(name: str, hex_colour: str, roughness: float, metallic: float = 0.0, **kw) -> Material:
    return Material(name, srgb(hex_colour), metallic=metallic, roughness=roughness, **kw)


def _on_surface(base: Part, point: tuple[float, float, float], normal: tuple[float, float, float]) -> Part:
    """``base`` (modelled around the origin with +Z as its up) turned to ``normal`` and moved to ``point``."""
    return transform(base, rotate=align_z(normal), translate=point)


# --- 1. mug -------------------------------------------------------------------------------------------------


def mug() -> Model:
    r, h, wall, floor = 0.042, 0.095, 0.005, 0.008
    inner = r - wall
    outside = arc((r - 0.004, 0.004), 0.004, -90.0, 0.0, 3) + [(r, h - wall / 2)]
    rim = arc((r - wall / 2, h - wall / 2), wall / 2, 0.0, 180.0, 6)
    inside = [(inner, floor + 0.004)] + arc((inner - 0.004, floor + 0.004), 0.004, 0.0, -90.0, 3)[1:]
    body = lathe(
        [
            [(0.0, 0.0), (r - 0.004, 0.0)],
            outside + rim[1:] + inside + [(0.0, floor)],
        ],
        segments=40,
    )
    handle_path = [
        (r - 0.004 + 0.032 * math.sin(math.radians(a)), 0.0, h / 2 + 0.030 * math.cos(math.radians(a)))
        for a in range(0, 181, 15)
    ]
    model = Model()
    model.add(_mat("red glaze", "#c62828", 0.25), body, tube(handle_path, 0.0065, sides=12))
    model.add(_mat("coffee", "#3e2415", 0.15), cylinder(inner - 0.0005, floor + 0.001, 0.8 * h, segments=40))
    return model


# --- 2. chair -----------------------------------------------------------------------------------------------


def chair() -> Model:
    wood = _mat("wood", "#8b5a2b", 0.6)
    w, d, seat_z, t = 0.44, 0.42, 0.45, 0.035
    model = Model()
    parts = [box((0.0, 0.0, seat_z), (w, d, 0.04))]
    for sx in (-1, 1):
        x = sx * (w / 2 - 0.03)
        parts.append(box((x, -(d / 2 - 0.03), (seat_z - 0.018) / 2), (t, t, seat_z - 0.018)))  # front leg
        parts.append(box((x, d / 2 - 0.03, 0.45), (t, t, 0.9)))  # back leg rising into the backrest post
    parts.append(box((0.0, d / 2 - 0.03, 0.84), (w - 0.06, 0.028, 0.09)))  # top rail
    for x in (-0.09, 0.0, 0.09):
        parts.append(box((x, d / 2 - 0.03, 0.64), (0.04, 0.018, 0.34)))  # slats
    for sy in (-1, 1):
        parts.append(box((0.0, sy * (d / 2 - 0.03), 0.15), (w - 0.06, 0.02, 0.03)))  # stretchers
    model.add(wood, *parts)
    # A pillow-like flattened ellipsoid: 0.40 x 0.38 m, 4 cm thick, half sunk into the seat.
    cushion = transform(
        sphere(0.02, segments=32, rings=12), scale=(10.0, 9.5, 1.0), translate=(0.0, -0.01, seat_z + 0.02)
    )
    model.add(_mat("red cushion", "#b71c1c", 0.85), cushion)
    return model


# --- 3. table lamp ------------------------------------------------------------------------------------------


def table_lamp() -> Model:
    metal = _mat("black metal", "#1f1f1f", 0.35, metallic=0.8)
    base = lathe(
        [[(0.0, 0.0), (0.08, 0.0)], arc((0.08, 0.008), 0.008, -90.0, 90.0, 6), [(0.08, 0.016), (0.0, 0.022)]],
        segments=40,
    )
    model = Model()
    model.add(metal, base, cylinder(0.008, 0.015, 0.235, segments=16))
    model.add(_mat("brass", "#b08d57", 0.3, metallic=1.0), cylinder(0.016, 0.23, 0.262, segments=20))
    model.add(
        _mat("bulb", "#fff6e0", 0.2, emissive=(1.0, 0.86, 0.6)), sphere(0.028, (0.0, 0.0, 0.285), 20, 10)
    )
    b0, b1, wall = (0.14, 0.2), (0.085, 0.4), 0.004  # shade: bottom and top rim (r, z), fabric thickness
    shade = lathe(
        [
            [b0, b1],
            [b1, (b1[0] - wall, b1[1])],
            [(b1[0] - wall, b1[1]), (b0[0] - wall, b0[1])],
            [(b0[0] - wall, b0[1]), b0],
        ],
        segments=48,
    )
    model.add(_mat("cream fabric", "#f1e3c3", 0.9), shade)
    return model


# --- 4. mushroom --------------------------------------------------------------------------------------------


def mushroom() -> Model:
    stem = lathe(
        [
            [(0.0, 0.0), (0.019, 0.0)],
            [(0.019, 0.0), (0.023, 0.012), (0.019, 0.04), (0.015, 0.07), (0.0, 0.075)],
        ],
        segments=32,
    )
    cap_r, cap_z, cap_h = 0.056, 0.066, 0.038
    dome = [
        (cap_r * math.cos(math.radians(a)), cap_z + cap_h * math.sin(math.radians(a)))
        for a in range(-20, 91, 10)
    ]
    dome[-1] = (0.0, cap_z + cap_h)
    model = Model()
    model.add(_mat("stem", "#efe4cc", 0.8), stem)
    model.add(_mat("gills", "#d9c49c", 0.9), lathe([[(0.0, cap_z - 0.004), dome[0]]], segments=48))
    model.add(_mat("red cap", "#c62828", 0.4), lathe([dome], segments=48))
    spot = transform(sphere(0.008, segments=12, rings=6), scale=(1.0, 1.0, 0.4))
    spots = []
    for elev, azim in [
        (70, 0),
        (45, 30),
        (45, 100),
        (40, 170),
        (50, 240),
        (40, 300),
        (20, 60),
        (20, 200),
        (15, 330),
        (25, 130),
        (65, 180),
        (85, 90),
    ]:
        a, t = math.radians(elev), math.radians(azim)
        rr, z = cap_r * math.cos(a), cap_z + cap_h * math.sin(a)
        nr, nz = math.cos(a) / cap_r, math.sin(a) / cap_h  # gradient of the ellipse: the outward normal
        spots.append(
            _on_surface(
                spot, (rr * math.cos(t), rr * math.sin(t), z), (nr * math.cos(t), nr * math.sin(t), nz)
            )
        )
    model.add(_mat("white spots", "#f7f7f2", 0.6), *spots)
    return model


# --- 5. snowman ---------------------------------------------------------------------------------------------


def snowman() -> Model:
    model = Model()
    balls = [(0.3, 0.28), (0.22, 0.7), (0.15, 1.0)]
    model.add(_mat("snow", "#f4f7fb", 0.8), *(sphere(r, (0.0, 0.0, z), 32, 16) for r, z in balls))
    coal = []
    head_r, head_z = balls[2]
    for azim, elev in [(-20, 15), (20, 15)]:
        coal.append(sphere(0.018, _orbit(head_r, azim, elev, head_z), 10, 5))
    mid_r, mid_z = balls[1]
    for elev in (-25, 0, 25):
        coal.append(sphere(0.02, _orbit(mid_r, 0, elev, mid_z), 10, 5))
    model.add(_mat("coal", "#151515", 0.7), *coal)
    nose = frustum(0.025, 0.0, 0.0, 0.15, segments=16)
    model.add(
        _mat("carrot", "#ef6c00", 0.6),
        transform(nose, rotate=rotation("x", 90.0), translate=_orbit(head_r - 0.01, 0, 0, head_z)),
    )
    hat_z = head_z + head_r * 0.8
    model.add(
        _mat("black hat", "#202020", 0.5),
        cylinder(0.17, hat_z - 0.01, hat_z + 0.01, segments=40),
        cylinder(0.1, hat_z, hat_z + 0.19, segments=40),
    )
    model.add(_mat("hat band", "#b71c1c", 0.6), cylinder(0.103, hat_z + 0.012, hat_z + 0.045, segments=40))
    scarf_z = mid_z + mid_r * 0.86
    model.add(
        _mat("red scarf", "#c62828", 0.9),
        transform(torus(0.135, 0.045, 40, 12), scale=(1.0, 1.0, 0.8), translate=(0.0, 0.0, scarf_z)),
        box((0.07, -0.16, scarf_z - 0.12), (0.07, 0.03, 0.22)),
    )
    twig = _mat("twig", "#5d4037", 0.8)
    for sx in (-1, 1):
        model.add(
            twig,
            tube([(sx * 0.15, 0.0, 0.75), (sx * 0.3, 0.0, 0.86), (sx * 0.42, 0.0, 0.98)], 0.012, sides=8),
            tube([(sx * 0.35, 0.0, 0.9), (sx * 0.42, 0.0, 0.9)], 0.008, sides=8),
        )
    return model


def _orbit(radius: float, azim_deg: float, elev_deg: float, z: float) -> tuple[float, float, float]:
    """A point on a sphere of ``radius`` at height ``z``: azimuth 0 = front (-Y), positive towards +X."""
    a, e = math.radians(azim_deg), math.radians(elev_deg)
    return (radius * math.cos(e) * math.sin(a), -radius * math.cos(e) * math.cos(a), z + radius * math.sin(e))


# --- 6. rocket ----------------------------------------------------------------------------------------------


def rocket() -> Model:
    ogive = [
        (0.1 * math.cos(math.radians(a)), 0.62 + 0.36 * math.sin(math.radians(a))) for a in range(0, 91, 10)
    ]
    ogive[-1] = (0.0, 0.98)
    split = 3  # the ogive point where the white body meets the red nose
    model = Model()
    model.add(
        _mat("white paint", "#f2f2f2", 0.35),
        lathe([[(0.0, 0.14), (0.085, 0.14)], [(0.085, 0.14), (0.1, 0.3), *ogive[: split + 1]]], segments=40),
    )
    model.add(_mat("red paint", "#d32f2f", 0.35), lathe([ogive[split:]], segments=40))
    fin = prism(
        [(0.07, 0.2), (0.22, 0.0), (0.22, 0.13), (0.09, 0.42)], 0.016
    )  # the rocket stands on its fins
    model.add(
        _mat("red paint", "#d32f2f", 0.35),
        *(transform(fin, rotate=rotation("z", a)) for a in (0, 90, 180, 270)),
    )
    model.add(_mat("steel", "#8a8a8a", 0.3, metallic=1.0), frustum(0.065, 0.05, 0.06, 0.145, segments=32))
    window = transform(
        sphere(0.045, segments=24, rings=10), scale=(1.0, 1.0, 0.3), rotate=rotation("x", 90.0)
    )
    model.add(_mat("window glass", "#4fc3f7", 0.08), transform(window, translate=(0.0, -0.1, 0.52)))
    ring = transform(torus(0.045, 0.008, 32, 8), rotate=rotation("x", 90.0), translate=(0.0, -0.098, 0.52))
    model.add(_mat("steel", "#8a8a8a", 0.3, metallic=1.0), ring)
    return model


# --- 7. potted cactus ---------------------------------------------------------------------------------------


def potted_cactus() -> Model:
    model = Model()
    model.add(
        _mat("terracotta", "#c1693c", 0.85),
        lathe(
            [
                [(0.0, 0.0), (0.06, 0.0)],
                [(0.06, 0.0), (0.078, 0.11)],
                [(0.078, 0.11), (0.088, 0.11)],
                [(0.088, 0.11), (0.088, 0.145)],
                [(0.088, 0.145), (0.078, 0.145)],
                [(0.078, 0.145), (0.075, 0.128)],
            ],
            segments=40,
        ),
    )
    model.add(_mat("soil", "#4e342e", 0.95), lathe([[(0.075, 0.128), (0.0, 0.128)]], segments=40))
    green = _mat("cactus green", "#2e7d32", 0.7)
    body = lathe([arc((0.0, 0.1), 0.04, -90.0, 0.0, 4) + arc((0.0, 0.32), 0.04, 0.0, 90.0, 6)], segments=24)
    arms = []
    for sx, z0, z1, reach in ((-1, 0.2, 0.29, 0.075), (1, 0.25, 0.34, 0.07)):
        arms.append(
            tube(
                [
                    (0.0, 0.0, z0),
                    (sx * (reach - 0.02), 0.0, z0),
                    (sx * reach, 0.0, z0 + 0.02),
                    (sx * reach, 0.0, z1),
                ],
                0.022,
                sides=16,
            )
        )
        arms.append(sphere(0.0225, (sx * reach, 0.0, z1), 16, 8))  # not 0.022: equator would weld to the cap
    model.add(green, body, *arms)
    petal = transform(sphere(0.012, segments=12, rings=6), scale=(1.0, 0.6, 0.5), translate=(0.011, 0.0, 0.0))
    flower = [
        transform(petal, rotate=rotation("z", a), translate=(0.0, 0.0, 0.362)) for a in range(0, 360, 72)
    ]
    model.add(_mat("pink flower", "#ec407a", 0.6), *flower)
    model.add(_mat("flower centre", "#fdd835", 0.6), sphere(0.007, (0.0, 0.0, 0.366), 10, 5))
    return model


# --- 8. donut -----------------------------------------------------------------------------------------------


def donut() -> Model:
    major, minor = 0.045, 0.025
    model = Model()
    model.add(
        _mat("dough", "#d49a5a", 0.7), transform(torus(major, minor, 48, 20), translate=(0.0, 0.0, minor))
    )
    icing_r, icing_h, icing_z = 0.0262, 0.0262 * 0.7, minor + 0.009
    icing = transform(torus(major, icing_r, 48, 20), scale=(1.0, 1.0, 0.7), translate=(0.0, 0.0, icing_z))
    model.add(_mat("pink icing", "#f48fb1", 0.3), icing)
    palette = [
        ("#ffffff", "sprinkle white"),
        ("#fdd835", "sprinkle yellow"),
        ("#42a5f5", "sprinkle blue"),
        ("#66bb6a", "sprinkle green"),
    ]
    rng = np.random.default_rng(
        20230816
    )  # fixed: the demo files must be byte-identical on every regeneration
    sprinkle = capsule(0.0015, -0.0025, 0.0025, segments=6, rings=2)
    for i in range(48):
        theta, phi, spin = (float(x) for x in rng.uniform((0.0, 25.0, 0.0), (2 * math.pi, 155.0, 180.0)))
        p = math.radians(phi)
        rr = major + icing_r * math.cos(p)
        z = icing_z + icing_h * math.sin(p)
        n = (
            math.cos(p) / icing_r * math.cos(theta),
            math.cos(p) / icing_r * math.sin(theta),
            math.sin(p) / icing_h,
        )
        # Lay the sprinkle flat: its axis along X, spun about the local normal by a random angle.
        flat = transform(sprinkle, rotate=rotation("y", 90.0))
        flat = transform(flat, rotate=rotation("z", spin))
        hexc, name = palette[i % len(palette)]
        model.add(
            _mat(name, hexc, 0.4), _on_surface(flat, (rr * math.cos(theta), rr * math.sin(theta), z), n)
        )
    return model


# --- 9. kettle ----------------------------------------------------------------------------------------------


def kettle() -> Model:
    enamel = _mat("red enamel", "#b71c1c", 0.3)
    steel = _mat("stainless steel", "#c8c8c8", 0.22, metallic=1.0)
    body = lathe(
        [
            [(0.0, 0.0), (0.085, 0.0)],
            [
                (0.085, 0.0),
                (0.097, 0.015),
                (0.102, 0.045),
                (0.098, 0.09),
                (0.085, 0.14),
                (0.068, 0.175),
                (0.06, 0.185),
            ],
            [(0.06, 0.185), (0.0, 0.185)],
        ],
        segments=48,
    )
    lid = lathe(
        [[(0.0, 0.18), (0.062, 0.18)], [(0.062, 0.18), (0.06, 0.19), (0.04, 0.205), (0.0, 0.21)]], segments=40
    )
    spout = tube(
        [(-0.08, 0.0, 0.06), (-0.115, 0.0, 0.1), (-0.14, 0.0, 0.145), (-0.155, 0.0, 0.17)], 0.013, sides=14
    )
    model = Model()
    model.add(enamel, body, spout)
    model.add(steel, lid)
    black = _mat("black plastic", "#1a1a1a", 0.5)
    handle = [
        (0.07 * math.cos(math.radians(a)), 0.0, 0.17 + 0.12 * math.sin(math.radians(a)))
        for a in range(0, 181, 15)
    ]
    model.add(black, tube(handle, 0.011, sides=12), sphere(0.014, (0.0, 0.0, 0.215), 16, 8))
    return model


# --- 10. bench ----------------------------------------------------------------------------------------------


def bench() -> Model:
    wood = _mat("bench wood", "#a0522d", 0.65)
    iron = _mat("black iron", "#1c1c1c", 0.5, metallic=0.6)
    length = 1.5
    model = Model()
    slats = [box((0.0, y, 0.45), (length, 0.085, 0.03)) for y in (-0.17, -0.065, 0.04, 0.145)]
    back_tilt = rotation("x", -12.0)  # lean the backrest back (its top towards +Y)
    for z in (0.2, 0.31, 0.42):
        slats.append(
            transform(
                box((0.0, 0.0, z), (length, 0.025, 0.085)), rotate=back_tilt, translate=(0.0, 0.215, 0.4)
            )
        )
    model.add(wood, *slats)
    frame = []
    for x in (-0.66, 0.66):
        frame.append(box((x, -0.17, 0.215), (0.05, 0.05, 0.43)))  # front leg
        frame.append(box((x, 0.15, 0.215), (0.05, 0.05, 0.43)))  # back leg
        frame.append(box((x, -0.01, 0.42), (0.05, 0.4, 0.035)))  # seat bearer
        frame.append(
            transform(box((0.0, 0.0, 0.27), (0.05, 0.035, 0.62)), rotate=back_tilt, translate=(x, 0.205, 0.4))
        )
        frame.append(box((x, -0.06, 0.65), (0.06, 0.42, 0.035)))  # armrest
        frame.append(box((x, -0.25, 0.55), (0.045, 0.045, 0.2)))  # armrest support
    model.add(iron, *frame)
    return model


# --- 11. traffic cone ---------------------------------------------------------------------------------------


def traffic_cone() -> Model:
    bottom_r, top_r, z0, z1 = 0.14, 0.022, 0.025, 0.7

    def at(z: float) -> tuple[float, float]:
        return (bottom_r + (top_r - bottom_r) * (z - z0) / (z1 - z0), z)

    bands = [z0, 0.33, 0.44, 0.52, 0.58, z1]
    orange = _mat("orange plastic", "#ff6d00", 0.5)
    white = _mat("reflective white", "#f5f5f5", 0.25)
    model = Model()
    model.add(orange, lathe([[(0.0, z0), at(z0)]], segments=40))
    for i in range(len(bands) - 1):
        model.add(white if i % 2 else orange, lathe([[at(bands[i]), at(bands[i + 1])]], segments=40))
    model.add(orange, lathe([[at(z1), (0.0, z1)]], segments=40))
    model.add(_mat("black rubber", "#212121", 0.8), box((0.0, 0.0, 0.015), (0.36, 0.36, 0.03)))
    return model


# --- 12. desk -----------------------------------------------------------------------------------------------


def desk() -> Model:
    wood = _mat("oak", "#b5835a", 0.55)
    model = Model()
    model.add(
        wood,
        box((0.0, 0.0, 0.735), (1.2, 0.6, 0.03)),  # top
        box((-0.39, 0.0, 0.36), (0.4, 0.55, 0.73)),  # drawer pedestal
        box((0.56, -0.24, 0.36), (0.05, 0.05, 0.73)),  # right legs
        box((0.56, 0.24, 0.36), (0.05, 0.05, 0.73)),
        box((0.18, 0.26, 0.55), (0.76, 0.02, 0.3)),  # modesty panel
    )
    fronts, handles = [], []
    for z in (0.12, 0.36, 0.6):
        fronts.append(box((-0.39, -0.277, z), (0.37, 0.02, 0.21)))
        bar = transform(capsule(0.006, -0.06, 0.06, segments=12, rings=3), rotate=rotation("y", 90.0))
        handles.append(transform(bar, translate=(-0.39, -0.305, z + 0.05)))
        for x in (-0.44, -0.34):  # the two posts holding the bar off the drawer front
            post = transform(cylinder(0.004, 0.0, 0.025, segments=10), rotate=rotation("x", 90.0))
            handles.append(transform(post, translate=(x, -0.28, z + 0.05)))
    model.add(_mat("drawer fronts", "#9c6b43", 0.5), *fronts)
    model.add(_mat("brushed metal", "#d0d0d0", 0.3, metallic=1.0), *handles)
    return model


DEMO_SPECS: tuple[DemoSpec, ...] = (
    DemoSpec("demo-mug", "a red ceramic coffee mug with a handle", mug),
    DemoSpec("demo-chair", "a wooden chair with a red seat cushion", chair),
    DemoSpec(
        "demo-table-lamp", "a table lamp with a cream fabric lampshade and a black metal base", table_lamp
    ),
    DemoSpec("demo-mushroom", "a red toadstool mushroom with white spots", mushroom),
    DemoSpec("demo-snowman", "a snowman with a carrot nose, a black top hat and a red scarf", snowman),
    DemoSpec("demo-rocket", "a white and red toy rocket with fins and a round window", rocket),
    DemoSpec("demo-potted-cactus", "a green cactus with two arms in a terracotta pot", potted_cactus),
    DemoSpec("demo-donut", "a donut with pink icing and colourful sprinkles", donut),
    DemoSpec("demo-kettle", "a red enamel kettle with a steel lid and a black handle", kettle),
    DemoSpec("demo-bench", "a wooden park bench with black iron legs", bench),
    DemoSpec("demo-traffic-cone", "an orange traffic cone with white reflective stripes", traffic_cone),
    DemoSpec("demo-desk", "a wooden office desk with three drawers", desk),
)
