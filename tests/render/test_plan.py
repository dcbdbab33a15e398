import json
import re

import numpy as np
import pytest

from mvforge import cameras
from mvforge.config import load
from mvforge.errors import UserError
from mvforge.render.config import RenderConfig
from mvforge.render.plan import SourceObject, hdri_pool, object_seed, plan_job


def _obj(uid="abc-1", ext="glb"):
    return SourceObject(uid=uid, kind="local", ext=ext, path=f"/x/{uid}.{ext}", caption="a thing")


def test_default_hdri_pool_is_the_bpy_wheel_set():
    pool = hdri_pool(None)
    assert len(pool) == 8 and all(p.suffix == ".exr" for p in pool)


def test_hdri_dir_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hdri_pool(tmp_path / "missing")
    (tmp_path / "a.exr").write_bytes(b"")
    with pytest.raises(UserError, match="a.exr is not a directory"):
        hdri_pool(tmp_path / "a.exr")
    (tmp_path / "a.exr").unlink()
    with pytest.raises(UserError, match="no .exr"):
        hdri_pool(tmp_path)


def test_plan_is_a_pure_function_of_seed_and_uid():
    cfg = load(RenderConfig, None, ["cameras.views=8", "orbits=2"])
    pool = hdri_pool(None)
    a, b = plan_job(_obj(), cfg, pool), plan_job(_obj(), cfg, pool)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert len(a["views"]) == 16 and a["importer"] == "gltf"
    other_seed = plan_job(_obj(), load(RenderConfig, None, ["cameras.views=8", "orbits=2", "seed=1"]), pool)
    assert other_seed["views"][0]["elevation_deg"] != a["views"][0]["elevation_deg"]
    assert plan_job(_obj("abc-2"), cfg, pool)["seed"] != a["seed"]
    assert object_seed(0, "abc-1") == a["seed"] < 2**63


def test_shared_cameras_give_every_object_the_same_views_and_its_own_light():
    pool = hdri_pool(None)
    shared = load(RenderConfig, None, ["cameras.views=8", "orbits=2", "shared_cameras=true"])
    a, b = plan_job(_obj("abc-1"), shared, pool), plan_job(_obj("xyz-9"), shared, pool)
    assert a["views"] == b["views"]
    assert a["hdri"] != b["hdri"]  # the light stays per object
    per_object = load(RenderConfig, None, ["cameras.views=8", "orbits=2"])
    assert (
        plan_job(_obj("abc-1"), per_object, pool)["views"]
        != plan_job(_obj("xyz-9"), per_object, pool)["views"]
    )
    reseeded = load(RenderConfig, None, ["cameras.views=8", "orbits=2", "shared_cameras=true", "seed=1"])
    assert plan_job(_obj("abc-1"), reseeded, pool)["views"] != a["views"]


def test_planned_views_follow_the_camera_convention():
    job = plan_job(_obj(), load(RenderConfig, None, ["cameras.views=4"]), hdri_pool(None))
    for v in job["views"]:
        c2w = np.array(v["c2w"])
        assert cameras.is_rigid(c2w)
        np.testing.assert_allclose(
            c2w, cameras.orbit_c2w(v["elevation_deg"], v["azimuth_deg"], v["distance"])
        )
    assert [v["azimuth_deg"] for v in job["views"]] == [0.0, 90.0, 180.0, 270.0]


def test_unknown_extension_plans_an_unsupported_job():
    assert plan_job(_obj(ext="xyz"), RenderConfig(), hdri_pool(None))["importer"] is None


@pytest.mark.parametrize("value", [0, -1, 1001, 10**20])
def test_objects_per_process_outside_1_to_1000_is_refused(value):
    from mvforge.render.config import LimitsConfig

    with pytest.raises(UserError, match="--objects-per-process must be in 1..1000"):
        LimitsConfig(objects_per_process=value)


def test_lamp_rig_is_planned_from_seed_and_uid_without_any_hdri():
    from mvforge.render.plan import LAMP_RIG

    cfg = load(RenderConfig, None, ["lighting.kind=lamps", "cameras.views=4"])
    job = plan_job(_obj(), cfg, [])  # no HDRI pool is needed under lamps
    assert job["hdri"] is None and json.dumps(job) == json.dumps(plan_job(_obj(), cfg, []))
    lamps = job["lamps"]
    assert 0.7 <= lamps["strength"] <= 1.3 and 0.0 <= lamps["rotation_deg"] < 360.0
    assert lamps["ambient"] == 0.05
    # The whole rig turns by one angle and scales by one strength per object.
    for lamp, (name, azimuth, elevation, energy) in zip(lamps["lights"], LAMP_RIG, strict=True):
        assert lamp["name"] == name and lamp["elevation_deg"] == elevation
        assert lamp["azimuth_deg"] == pytest.approx((azimuth + lamps["rotation_deg"]) % 360.0)
        assert lamp["energy"] == pytest.approx(energy * lamps["strength"])
    # Cameras are drawn first, so the lighting does not move them.
    assert (
        job["views"]
        == plan_job(_obj(), load(RenderConfig, None, ["cameras.views=4"]), hdri_pool(None))["views"]
    )
    assert plan_job(_obj("abc-2"), cfg, [])["lamps"]["rotation_deg"] != lamps["rotation_deg"]
    fixed = load(RenderConfig, None, ["lighting.kind=lamps", "lighting.rotation_random=false"])
    assert plan_job(_obj(), fixed, [])["lamps"]["rotation_deg"] == 0.0


def test_lighting_settings_are_checked():
    from mvforge.errors import ConfigError

    with pytest.raises(ConfigError, match="'hdri', 'lamps'"):
        load(RenderConfig, None, ["lighting.kind=suns"])
    with pytest.raises(UserError, match="strength_min must be >= 0 and <= lighting.strength_max"):
        load(RenderConfig, None, ["lighting.strength_min=2"])
    with pytest.raises(UserError, match="lighting.ambient must be 0 or more"):
        load(RenderConfig, None, ["lighting.ambient=-1"])
    for key in ("strength_max", "ambient", "exposure_target"):  # inf passes a >= check, then overflows numpy
        with pytest.raises(UserError, match=f"lighting.{key}: expected a finite number, got inf"):
            load(RenderConfig, None, [f"lighting.{key}=inf"])
    with pytest.raises(UserError, match="cycles.adaptive_threshold: expected a finite number, got nan"):
        load(RenderConfig, None, ["cycles.adaptive_threshold=nan"])
    # A flag's bad value names the whole setting, not only its last part.
    from mvforge.config import with_flags

    with pytest.raises(ConfigError, match="^lighting.kind: 'bogus' is not one of 'hdri', 'lamps'"):
        with_flags(RenderConfig(), {"lighting.kind": "bogus"})
    with pytest.raises(UserError, match="cycles.filter_width must be in 0.01..10 pixels"):
        load(RenderConfig, None, ["cycles.filter_width=0"])
    # Blender's own ranges: beyond them it clamps silently (or kills the render), so refused up front.
    for setting, message in (
        (
            "cycles.adaptive_min_samples=-1",
            "--adaptive-min-samples (cycles.adaptive_min_samples) must be 0 to 4096, got -1",
        ),
        (
            "cycles.adaptive_min_samples=4097",
            "--adaptive-min-samples (cycles.adaptive_min_samples) must be 0 to 4096, got 4097",
        ),
        (
            "cycles.adaptive_threshold=2",
            "--adaptive-threshold (cycles.adaptive_threshold) must be 0.0 to 1.0, got 2.0 (0 = off)",
        ),
        (
            "cycles.samples=100000000000",
            "--samples (cycles.samples) must be 1 to 16777216, got 100000000000",
        ),
        ("cycles.max_bounces=100000", "--max-bounces (cycles.max_bounces) must be 0 to 1024, got 100000"),
        ("cycles.diffuse_bounces=-1", "cycles.diffuse_bounces must be 0 to 1024, got -1"),
        ("cycles.world_map_resolution=-1", "world_map_resolution must be 0 (AUTOMATIC) or 4 to 8192"),
        ("cycles.world_map_resolution=100000000", "world_map_resolution must be 0 (AUTOMATIC) or 4 to 8192"),
        ("resolution=100000", "--resolution must be 8 to 65536 pixels, got 100000"),
    ):
        with pytest.raises(UserError, match=re.escape(message)):
            load(RenderConfig, None, [setting])
    with pytest.raises(UserError, match="needs at least one HDRI"):
        plan_job(_obj(), RenderConfig(), [])


def test_hdri_settings_under_the_lamp_rig_are_refused_once_flags_are_merged(tmp_path):
    from mvforge.config import with_flags
    from mvforge.render.config import check_lighting_kind

    # Every HDRI-only setting given, named in one line.
    cfg = load(RenderConfig, None, ["lighting.kind=lamps", "lighting.visible_to_camera=true"])
    cfg = with_flags(cfg, {"lighting.exposure": "normalized", "lighting.hdri_dir": str(tmp_path)})
    with pytest.raises(
        UserError,
        match=r"^--hdri-dir \(lighting.hdri_dir\), --hdri-exposure normalized \(lighting.exposure\), "
        r"--hdri-visible \(lighting.visible_to_camera\) apply to --lighting hdri only; remove them",
    ):
        check_lighting_kind(cfg.lighting)
    # A config file under lamps with an HDRI directory, then --lighting hdri: the flag wins, nothing refused
    # (the check runs on the merged settings, not on each partial one).
    path = tmp_path / "lamps.toml"
    path.write_text(f'[lighting]\nkind = "lamps"\nhdri_dir = "{tmp_path}"\n', encoding="utf-8")
    check_lighting_kind(with_flags(load(RenderConfig, path, []), {"lighting.kind": "hdri"}).lighting)
    with pytest.raises(UserError, match="^--hdri-dir .* applies to --lighting hdri only; remove it"):
        check_lighting_kind(load(RenderConfig, path, []).lighting)
