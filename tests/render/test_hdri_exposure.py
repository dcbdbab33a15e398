"""HDRI exposure normalisation (docs/render.md, ``lighting.exposure``): the mean radiance of a map, a real render under a
dim and a bright map, what meta.json records, and what a resume refuses."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvforge.cameras import OrbitSampling
from mvforge.errors import UserError
from mvforge.formats import renders as layout
from mvforge.render import driver
from mvforge.render.config import CyclesConfig, LightingConfig, LimitsConfig, RenderConfig
from mvforge.render.exposure import mean_radiance, normalized_strength
from mvforge.render.plan import SourceObject, plan_job

DATA = Path(__file__).resolve().parents[1] / "data"


# --- the pure radiance function ---------------------------------------------------------------------------


def test_a_constant_map_has_its_constant_as_mean_radiance():
    grey = np.full((16, 32, 4), 0.37, dtype=np.float32)
    assert mean_radiance(grey) == pytest.approx(0.37, rel=1e-6)
    # Luminance, not the channel mean: pure green is far brighter to the eye than pure blue.
    green = np.zeros((8, 16, 3))
    green[..., 1] = 1.0
    blue = np.zeros((8, 16, 3))
    blue[..., 2] = 1.0
    assert mean_radiance(green) == pytest.approx(0.7152)
    assert mean_radiance(blue) == pytest.approx(0.0722)


def test_a_map_bright_only_near_a_pole_is_weighted_by_solid_angle():
    h, w = 64, 128
    pole = np.zeros((h, w, 3))
    pole[:4] = 1.0  # the 4 rows nearest one pole: 1/16 of the rows, far less of the sphere
    band = np.zeros((h, w, 3))
    band[h // 2 - 2 : h // 2 + 2] = 1.0  # 4 rows at the equator
    # Solid angle of a latitude band: (sin(top) - sin(bottom)) / 2 of the sphere.
    polar_cap = (1 - np.sin(np.radians(90 - 4 * 180 / h))) / 2
    equator = np.sin(np.radians(2 * 180 / h))
    assert mean_radiance(pole) == pytest.approx(polar_cap, rel=0.01)
    assert mean_radiance(band) == pytest.approx(equator, rel=0.01)
    # Unweighted, both would be 4/64 of the map: 0.0625.
    assert mean_radiance(pole) < 0.2 * 4 / h and mean_radiance(band) > 1.5 * 4 / h
    # Row order does not matter (Blender stores rows bottom-up): the weight is symmetric.
    assert mean_radiance(pole[::-1]) == pytest.approx(mean_radiance(pole))


def test_bad_maps_raise():
    with pytest.raises(ValueError, match="non-finite"):
        mean_radiance(np.full((4, 8, 3), np.inf))
    with pytest.raises(ValueError, match=r"\(H, W, C>=3\)"):
        mean_radiance(np.ones((4, 8)))
    with pytest.raises(ValueError, match="black map"):
        normalized_strength(1.0, 0.5, 0.0)
    assert normalized_strength(1.2, 0.5, 0.25) == pytest.approx(2.4)


def test_exposure_settings_are_checked():
    from mvforge.config import load
    from mvforge.errors import ConfigError

    with pytest.raises(ConfigError, match="'raw', 'normalized'"):
        load(RenderConfig, None, ["lighting.exposure=auto"])
    with pytest.raises(UserError, match="exposure_target must be > 0"):
        load(RenderConfig, None, ["lighting.exposure=normalized", "lighting.exposure_target=0"])
    # The planner passes the setting to the Blender child, which measures the map.
    obj = SourceObject(uid="a", kind="local", ext="glb", path="a.glb")
    cfg = load(RenderConfig, None, ["lighting.exposure=normalized", "lighting.exposure_target=0.4"])
    hdri = plan_job(obj, cfg, [Path("x/studio.exr")])["hdri"]
    assert (hdri["exposure"], hdri["exposure_target"]) == ("normalized", 0.4)
    assert "exposure_target" not in plan_job(obj, RenderConfig(), [Path("x/studio.exr")])["hdri"]


# --- a real render ------------------------------------------------------------------------------------------

# Two maps written by Blender itself (the formats it reads back), in a separate process: a dim uniform grey .exr
# and a bright .hdr (RGBE) whose upper half is twice its lower half; mean radiances 0.08 and 1.0.
MAPS_SCRIPT = """
import sys, bpy, numpy as np
h, w = 16, 32
for path, fmt, lower, upper in ((sys.argv[1], "OPEN_EXR", 0.08, 0.08), (sys.argv[2], "HDR", 2 / 3, 4 / 3)):
    img = bpy.data.images.new("map", w, h, alpha=False, float_buffer=True)
    px = np.ones((h, w, 4), dtype=np.float32)
    px[: h // 2, :, :3], px[h // 2 :, :, :3] = lower, upper  # Blender's rows run bottom-up
    img.pixels.foreach_set(px.ravel())
    img.filepath_raw, img.file_format = path, fmt
    img.save()
"""


@pytest.fixture(scope="module")
def hdri_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hdri")
    dirs = {"dim": root / "dim", "bright": root / "bright"}
    for d in dirs.values():
        d.mkdir()
    subprocess.run(
        [sys.executable, "-c", MAPS_SCRIPT, str(dirs["dim"] / "dim.exr"), str(dirs["bright"] / "bright.hdr")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dirs


def _object_means(out: Path, uid: str) -> float:
    from PIL import Image

    with Image.open(layout.object_dir(out, uid) / layout.view_name(0)) as img:
        px = np.asarray(img.convert("RGBA"), dtype=np.float64)
    return float(px[..., :3][px[..., 3] > 128].mean())


def test_normalized_exposure_gives_a_dim_and_a_bright_map_the_same_light_and_meta_records_it(
    tmp_path, hdri_dirs
):
    from mvforge.render.runner import run_objects

    obj = SourceObject(uid="box", kind="local", ext="glb", path=str(DATA / "glb" / "BoxTextured.glb"))
    base = RenderConfig(
        resolution=32,
        cameras=OrbitSampling(views=1),
        cycles=CyclesConfig(samples=4, threads=1),
        lighting=LightingConfig(strength_min=1.0, strength_max=1.0, rotation_random=False),
    )
    jobs = []
    for exposure in ("raw", "normalized"):
        lighting = dataclasses.replace(base.lighting, exposure=exposure, exposure_target=0.5)
        cfg = dataclasses.replace(base, lighting=lighting)
        for name in ("dim", "bright"):
            job = plan_job(obj, cfg, sorted(hdri_dirs[name].iterdir()))
            jobs.append(job | {"uid": f"{exposure}-{name}"})  # same cameras, one Blender process for all four
    recs = run_objects(jobs, tmp_path, LimitsConfig(timeout_s=180))
    assert [r["status"] for r in recs] == ["ok"] * 4, recs

    means = {j["uid"]: _object_means(tmp_path, j["uid"]) for j in jobs}
    assert means["raw-bright"] > 2.5 * means["raw-dim"], means
    assert means["normalized-bright"] == pytest.approx(means["normalized-dim"], rel=0.1), means

    metas = {
        j["uid"]: json.loads((layout.object_dir(tmp_path, j["uid"]) / layout.META).read_text("utf-8"))["hdri"]
        for j in jobs
    }
    # Blender's pixels of the written maps give back the radiance they were written with.
    assert metas["raw-dim"]["mean_radiance"] == pytest.approx(0.08, rel=0.01)
    assert metas["raw-bright"]["mean_radiance"] == pytest.approx(1.0, rel=0.02)  # RGBE keeps ~1 % precision
    assert metas["raw-bright"] | {"mean_radiance": None} == {
        "name": "bright",
        "rotation_deg": 0.0,
        "strength": 1.0,
        "visible_to_camera": False,
        "exposure": "raw",
        "mean_radiance": None,
        "strength_applied": 1.0,
    }
    dim = metas["normalized-dim"]
    assert dim["exposure"] == "normalized" and dim["exposure_target"] == 0.5 and dim["strength"] == 1.0
    assert dim["strength_applied"] == pytest.approx(0.5 / dim["mean_radiance"])


# --- resume safety ------------------------------------------------------------------------------------------


def test_resume_refuses_another_exposure_and_the_target_matters_only_when_normalized(tmp_path):
    out = tmp_path / "renders"
    raw = RenderConfig()
    driver._check_config(out, raw, overwrite=False)
    normalized = dataclasses.replace(raw, lighting=LightingConfig(exposure="normalized"))
    with pytest.raises(UserError, match="lighting.exposure was 'raw', now 'normalized'"):
        driver._check_config(out, normalized, overwrite=False)
    # The target scales nothing at raw exposure; under normalized a new target is a lighting change.
    other_target = dataclasses.replace(raw, lighting=LightingConfig(exposure_target=0.9))
    driver._check_config(out, other_target, overwrite=False)
    driver._check_config(out, normalized, overwrite=True, uids=None)
    brighter = dataclasses.replace(raw, lighting=LightingConfig(exposure="normalized", exposure_target=0.9))
    with pytest.raises(UserError, match="lighting.exposure_target was 0.35, now 0.9"):
        driver._check_config(out, brighter, overwrite=False)


def test_an_unreadable_config_beside_finished_renders_is_refused_not_replaced(tmp_path):
    """A damaged config.toml cannot vouch for the renders beside it: recording new settings over them would mix
    two recipes in one directory unnoticed."""
    from mvforge.formats import renders as layout

    out = tmp_path / "renders"
    out.mkdir()
    (out / layout.CONFIG).write_text("[[x\n")
    driver._check_config(out, RenderConfig(), overwrite=False)  # nothing finished yet: replaced
    (out / layout.CONFIG).write_text("[[x\n")
    (out / layout.FAILED_DIR).mkdir()
    (out / layout.FAILED_DIR / "obj.json").write_text("{}")
    with pytest.raises(UserError, match="is not TOML .* holds finished renders"):
        driver._check_config(out, RenderConfig(), overwrite=False)
    assert (out / layout.CONFIG).read_text() == "[[x\n"
    driver._check_config(out, RenderConfig(), overwrite=True, uids=None)  # re-rendering everything is allowed
