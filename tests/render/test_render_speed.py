"""Render speed (docs/bench/render_speed.md): the driver's dry run with the stub renderer, and the sampling
settings in meta.json.

The dry run is the small version of ``bench/bench_render_driver.py`` (10⁵ objects): 10³ synthetic sources, half
of them finished before the run, through the real driver, a real local Ray and the real resume logic; only
Cycles is replaced (``tests.fixtures.synthetic.stub_render_task``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from mvforge.cameras import OrbitSampling
from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_json, read_jsonl
from mvforge.render import driver
from mvforge.render.config import CyclesConfig, LightingConfig, LimitsConfig, RenderConfig
from mvforge.render.download import sha256_file
from mvforge.render.plan import SourceObject, hdri_pool, plan_job
from mvforge.render.runner import run_object
from tests.fixtures.synthetic import stub_render_task

DATA = Path(__file__).resolve().parents[1] / "data"
GLB = DATA / "glb" / "BoxTextured.glb"


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_dry_run_over_1000_sources_half_finished_ends_in_one_record_each(tmp_path, ray_local):
    n = 1000
    sources = [
        SourceObject(
            uid=hashlib.sha256(str(i).encode()).hexdigest()[:32], kind="local", ext="glb", path=str(GLB)
        )
        for i in range(n)
    ]
    out = tmp_path / "renders"
    sha = sha256_file(GLB)
    for obj in sources[::2]:  # half finished by an earlier run
        meta = layout.RenderMeta(uid=obj.uid, source={"kind": "local", "path": obj.path, "sha256": sha})
        atomic_write_json(layout.object_dir(out, obj.uid) / layout.META, meta.to_dict())
    cfg = RenderConfig()

    first = driver.render(sources, out, cfg, workers=4, show_progress=False, task=stub_render_task)

    assert first.skipped == n // 2
    assert first.counts == {"ok": n // 2}
    assert all(layout.status(out, o.uid) == "ok" for o in sources)
    lines = read_jsonl(out / layout.MANIFEST)
    assert sorted(rec["uid"] for rec in lines) == sorted(o.uid for o in sources)  # one line per object
    rendered = {rec["uid"] for rec in lines if not rec.get("recovered")}
    assert rendered == {o.uid for o in sources[1::2]}
    # The stub wrote what the plan said: 32 views by default, seeded per object.
    one = sources[1]
    meta = json.loads((layout.object_dir(out, one.uid) / layout.META).read_text(encoding="utf-8"))
    assert meta["views"] == 32 and meta["seed"] == plan_job(one, cfg, hdri_pool(None))["seed"]
    assert not list(out.glob("*/*.tmp-*"))

    again = driver.render(sources, out, cfg, workers=4, show_progress=False, task=stub_render_task)
    assert again.skipped == n and again.counts == {}
    assert len(read_jsonl(out / layout.MANIFEST)) == n


def _meta_cycles(tmp_path: Path, cycles: CyclesConfig) -> dict:
    obj = SourceObject(uid="box", kind="local", ext="glb", path=str(GLB))
    cfg = RenderConfig(resolution=32, cameras=OrbitSampling(views=1), cycles=cycles)
    rec = run_object(plan_job(obj, cfg, hdri_pool(None)), tmp_path, LimitsConfig(timeout_s=120))
    assert rec["status"] == "ok", rec
    return json.loads((layout.object_dir(tmp_path, "box") / layout.META).read_text(encoding="utf-8"))[
        "cycles"
    ]


def test_meta_records_the_denoiser_and_world_map_that_blender_used(tmp_path):
    got = _meta_cycles(
        tmp_path / "oidn",
        CyclesConfig(
            samples=4,
            denoise=True,
            denoise_prefilter="ACCURATE",
            denoise_quality="FAST",
            world_map_resolution=64,
            filter_width=0.5,
            threads=1,
        ),
    )
    assert got["denoiser"] == "OPENIMAGEDENOISE"
    assert got["denoising_input_passes"] == "RGB_ALBEDO_NORMAL"
    assert got["denoising_prefilter"] == "ACCURATE" and got["denoising_quality"] == "FAST"
    assert got["world_sampling"] == "MANUAL" and got["world_map_resolution"] == 64
    assert got["samples"] == 4 and got["persistent_data"] is True and got["filter_width"] == 0.5

    plain = _meta_cycles(
        tmp_path / "plain", CyclesConfig(samples=4, denoise=False, world_map_resolution=0, threads=1)
    )
    assert plain["denoiser"] is None
    assert plain["world_sampling"] == "AUTOMATIC" and plain["world_map_resolution"] is None
    assert plain["filter_width"] == 1.5  # Blender's default, now set explicitly


def test_adaptive_sampling_stops_pixels_only_past_the_minimum_cycles_uses(tmp_path):
    from PIL import Image

    from mvforge.render.runner import run_objects

    # One job under five adaptive settings, rendered in one Blender process (same cameras, lamps, seed).
    obj = SourceObject(uid="off", kind="local", ext="glb", path=str(DATA / "glb" / "Duck.glb"))
    cycles = CyclesConfig(samples=32, adaptive_threshold=0.0, denoise=False, filter_width=0.01, threads=1)
    cfg = RenderConfig(
        resolution=32, cameras=OrbitSampling(views=1), cycles=cycles, lighting=LightingConfig(kind="lamps")
    )
    job = plan_job(obj, cfg, [])
    # Threshold 0.1: Cycles' automatic minimum is ceil(16 / 0.1^0.3) = 32, its first check after 48 samples, so
    # no pixel of 32 stops; from a minimum of 8 the first check is after 16; at 16 samples that is the last one.
    settings = {
        "auto": {"adaptive_min_samples": 0},
        "min8": {"adaptive_min_samples": 8},
        "min8-16spp": {"adaptive_min_samples": 8, "samples": 16},
        "off-16spp": {"adaptive_threshold": 0.0, "samples": 16},
    }
    jobs = [job] + [
        {**job, "uid": uid, "cycles": job["cycles"] | {"adaptive_threshold": 0.1} | over}
        for uid, over in settings.items()
    ]
    recs = run_objects(jobs, tmp_path, LimitsConfig(timeout_s=120))
    assert [r["status"] for r in recs] == ["ok"] * len(jobs), recs

    def png(uid):
        with Image.open(layout.object_dir(tmp_path, uid) / layout.view_name(0)) as img:
            return img.tobytes()

    def recorded(uid):
        return json.loads((layout.object_dir(tmp_path, uid) / layout.META).read_text(encoding="utf-8"))[
            "cycles"
        ]

    assert png("auto") == png("off") != png("min8")
    assert png("min8-16spp") == png("off-16spp")
    assert [recorded(u)["adaptive_min_samples"] for u in ("off", "auto", "min8")] == [None, 32, 8]
    assert recorded("min8")["light_tree"] is True
    # The resume check agrees: "auto" and both 16-sample jobs decide the same pixels as "off", "min8" does not.
    parts = [driver._render_part({"cycles": j["cycles"]})["cycles"]["adaptive_sampling"] for j in jobs]
    off = driver._ADAPTIVE_OFF
    assert parts == [off, off, "threshold 0.1, pixels may stop from 16 samples", off, off]
    # Thresholds equal to 6 digits are still two settings (Cycles gets both as float32).
    close = [
        {**job["cycles"], "adaptive_threshold": t, "adaptive_min_samples": 8} for t in (0.0123456, 0.01234564)
    ]
    a, b = (driver._render_part({"cycles": c})["cycles"]["adaptive_sampling"] for c in close)
    assert a != b


def test_resume_rehashes_a_finished_source_only_when_its_size_or_mtime_changed(tmp_path, monkeypatch):
    import os
    import shutil

    from mvforge.errors import UserError

    src = tmp_path / "box.glb"
    shutil.copy(GLB, src)
    st = os.stat(src)
    out = tmp_path / "renders"
    obj = SourceObject(uid="box", kind="local", ext="glb", path=str(src))
    source = {"kind": "local", "path": str(src), "sha256": sha256_file(src)}
    source |= {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    atomic_write_json(layout.object_dir(out, "box") / layout.META, layout.RenderMeta("box", source).to_dict())

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed although unchanged")

    with monkeypatch.context() as m:
        m.setattr("mvforge.render.download.sha256_file", no_hashing)
        driver._check_same_sources(out, [obj])

    # Another file under the same path and uid: new bytes, new mtime -> hashed and refused.
    data = bytearray(src.read_bytes())
    data[-1] ^= 0xFF
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(UserError, match="uid box was rendered from another file"):
        driver._check_same_sources(out, [obj])


def test_resume_refuses_only_the_settings_that_change_the_pixels_and_names_them(tmp_path):
    import dataclasses

    from mvforge.errors import UserError

    # A directory rendered at 32 samples, no denoiser, the AUTOMATIC world map, Cycles' automatic adaptive
    # minimum (0).
    old = RenderConfig(
        cycles=CyclesConfig(samples=32, denoise=False, world_map_resolution=0, adaptive_min_samples=0)
    )
    out = tmp_path / "renders"
    driver._check_config(out, old, overwrite=False)
    saved = (out / layout.CONFIG).read_text(encoding="utf-8")

    # The new defaults (16 samples, denoised) differ: refused, naming the first difference.
    with pytest.raises(UserError, match="cycles.denoise was false, now true"):
        driver._check_config(out, RenderConfig(), overwrite=False)
    # The denoiser's settings do not matter with it off.
    quick = dataclasses.replace(old.cycles, denoise_prefilter="NONE", denoise_quality="FAST")
    driver._check_config(out, dataclasses.replace(old, cycles=quick), overwrite=False)
    (out / layout.CONFIG).write_text(saved, encoding="utf-8")
    # At 32 samples a minimum of 8 lets pixels stop where Cycles' automatic one (64 at threshold 0.01) did not:
    # refused, naming adaptive sampling.
    with pytest.raises(
        UserError,
        match=r"adaptive_sampling was 'off \(no pixel can stop before its last sample\)', now 'threshold 0.01, "
        r"pixels may stop from 16 samples'\)",
    ):
        driver._check_config(
            out,
            dataclasses.replace(old, cycles=dataclasses.replace(old.cycles, adaptive_min_samples=8)),
            False,
        )
    # Fewer samples turn adaptive sampling off as a consequence: the samples are named, not adaptive sampling.
    with pytest.raises(UserError, match=r"\(cycles.samples was 32, now 16\)"):
        driver._check_config(
            out, dataclasses.replace(old, cycles=dataclasses.replace(old.cycles, samples=16)), overwrite=False
        )
    lamps = dataclasses.replace(old, lighting=dataclasses.replace(old.lighting, kind="lamps"))
    with pytest.raises(UserError, match="lighting.kind was 'hdri', now 'lamps'"):
        driver._check_config(out, lamps, overwrite=False)
    # Under lamps no world map is built: its resolution may change on resume (the HDRI's settings too).
    lamp_dir = tmp_path / "lamps"
    driver._check_config(lamp_dir, lamps, overwrite=False)
    other_map = dataclasses.replace(lamps, cycles=dataclasses.replace(lamps.cycles, world_map_resolution=256))
    driver._check_config(lamp_dir, other_map, overwrite=False)
    # A coarser world map changes the noise: refused.
    coarse = dataclasses.replace(old, cycles=dataclasses.replace(old.cycles, world_map_resolution=256))
    with pytest.raises(UserError, match="world_map_resolution was 0, now 256"):
        driver._check_config(out, coarse, overwrite=False)


def _lamp_render(tmp_path: Path, azimuth_deg: float, limits: LimitsConfig | None = None):
    """Monkey seen from the front (camera at azimuth 0 on -Y: +X is the image's right) under ONE sun lamp from
    ``azimuth_deg`` at elevation 0 and no ambient: (luminance of the left half, right half, meta.json)."""
    import numpy as np
    from PIL import Image

    obj = SourceObject(uid="monkey", kind="local", ext="glb", path=str(DATA / "glb" / "monkey.glb"))
    flat = OrbitSampling(views=1, elevation_min_deg=0.0, elevation_max_deg=0.0)
    cfg = RenderConfig(
        resolution=48,
        cameras=flat,
        cycles=CyclesConfig(samples=4, threads=1),
        lighting=LightingConfig(kind="lamps"),
    )
    job = plan_job(obj, cfg, [])
    job["lamps"] = job["lamps"] | {
        "ambient": 0.0,
        "lights": [{"name": "key", "azimuth_deg": azimuth_deg, "elevation_deg": 0.0, "energy": 3.0}],
    }
    rec = run_object(job, tmp_path, limits or LimitsConfig(timeout_s=120))
    assert rec["status"] == "ok", rec
    d = layout.object_dir(tmp_path, "monkey")
    with Image.open(d / layout.view_name(0)) as img:
        px = np.asarray(img.convert("RGBA"), dtype=np.float64)
    lum = px[..., :3].mean(axis=2) * (px[..., 3] > 128)
    half = px.shape[1] // 2
    return lum[:, :half].sum(), lum[:, half:].sum(), json.loads((d / layout.META).read_text(encoding="utf-8"))


def test_a_sun_lamp_lights_the_side_it_shines_from_and_meta_records_the_rig(tmp_path, monkeypatch):
    # Locks of the test's own, so no other render on this machine holds the CPUs it asserts on.
    monkeypatch.setenv("MVFORGE_CPU_LOCKS", str(tmp_path / "cpu-locks"))
    left, right, meta = _lamp_render(tmp_path / "east", 90.0)  # from +X: the image's right
    assert right > 3 * left, (left, right)
    assert meta["hdri"] is None
    assert meta["lamps"]["lights"] == [
        {"name": "key", "azimuth_deg": 90.0, "elevation_deg": 0.0, "energy": 3.0}
    ]
    # A lamp rig has no world map to build: the ambient world is never light-sampled.
    assert meta["cycles"]["world_sampling"] == "NONE" and meta["cycles"]["world_map_resolution"] is None

    # Pinned to one CPU of its own (threads = 1; limits.pin_cpus), its lock released when the process ended.
    assert len(meta["process"]["cpus"]) == 1
    from mvforge.render import cpus

    every = cpus.acquire(len(os.sched_getaffinity(0)))
    assert every is not None
    every.release()

    left, right, meta = _lamp_render(tmp_path / "west", 270.0, LimitsConfig(timeout_s=120, pin_cpus=False))
    assert left > 3 * right, (left, right)
    assert meta["process"]["cpus"] is None
