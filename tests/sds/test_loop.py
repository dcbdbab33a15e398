"""The SDS loop end to end on the tiny model: outputs, SIGKILL + resume = uninterrupted run
(docs/sds.md, "Resume"), one-line user errors through the installed `mvtrain` (docs/cli.md)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from mvforge import config as config_mod
from mvforge.metrics import read_rows
from mvforge.sds.config import SDSConfig
from mvforge.sds.loop import checkpoints, run_sds
from tests.sds.conftest import tiny_sds_config

MVTRAIN = Path(sys.executable).with_name("mvtrain")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    return env


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = read_rows(run_dir / "metrics.csv")
    return [(int(r["step"]), r["loss"]) for r in rows]


def test_sigkill_then_resume_gives_the_uninterrupted_losses_field_and_outputs(tiny_mv, tmp_path):
    cfg = tiny_sds_config(tiny_mv, tmp_path / "ref", max_steps=6, export=False, snapshot_every=0)
    ref = run_sds(cfg, show_progress=False)

    # the same run through the CLI, killed after its first checkpoint
    # sds/<name>/: the demo's layout, one run directory per prompt under the report's sds/
    killed_cfg = dataclasses.replace(cfg, out=str(tmp_path / "sds" / "mug"), export=True, snapshot_every=2)
    cfg_file = tmp_path / "sds.toml"
    cfg_file.write_text(config_mod.to_toml(killed_cfg))
    proc = subprocess.Popen(
        [str(MVTRAIN), "sds", "--config", str(cfg_file)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    run_dir = tmp_path / "sds" / "mug"  # --out itself (docs/cli.md, "output")
    deadline = time.monotonic() + 240
    while not checkpoints(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = [int(p.stem.split("-")[1]) for p in checkpoints(run_dir)]
    assert done and max(done) < 6, "killed too late to test resume"

    resumed = run_sds(killed_cfg, show_progress=False)
    # bit for bit the same steps, losses and field (cfg.deterministic)
    assert _losses(resumed) == _losses(ref)
    assert [s for s, _ in _losses(resumed)] == list(range(1, 7))  # steps done, as fit and dreambooth log
    a = torch.load(checkpoints(ref)[-1], weights_only=False)["renderer"]
    b = torch.load(checkpoints(resumed)[-1], weights_only=False)["renderer"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # outputs of design §2.6
    summary = json.loads((resumed / "summary.json").read_text())
    assert (
        summary["prompt"] == "a red ceramic mug" and summary["steps"] == 6 and summary["backend"] == "torch"
    )
    assert summary["resumed_from_step"] == max(done) and summary["peak_memory_mb"] > 0
    for name in ("config.toml", "mesh.glb", "mesh.obj", "turntable.gif", "turntable.mp4"):
        assert (resumed / name).is_file(), name
    assert (resumed / "snapshots" / "step-000006.png").is_file()
    assert len(trimesh.load(resumed / "mesh.glb", force="mesh").faces) > 0
    assert config_mod.load(SDSConfig, resumed / "config.toml") == killed_cfg
    # the run report shows the turntable (the GIF itself) and the latest snapshot
    from mvforge.report import write_report

    html = write_report(tmp_path).read_text()
    assert "a red ceramic mug" in html and "sds/mug/turntable.gif" in html and "step-000006" in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", " ", "--model", "MODEL"], "--prompt is given an empty value"),
        (["--prompt", "a mug", "--model", "{tmp}/nope"], "does not exist"),
        (["--prompt", "a mug", "--model", "PLAIN_SD"], "no camera embedding"),
    ],
)
def test_user_errors_are_one_line(args, message, tiny_mv, tmp_path, request):
    if "PLAIN_SD" in args:
        from mvforge.models.tiny import make_tiny_sd

        plain = make_tiny_sd(tmp_path / "plain-sd")
        args = [str(plain) if a == "PLAIN_SD" else a for a in args]
    args = [str(tiny_mv) if a == "MODEL" else a.format(tmp=tmp_path) for a in args]
    res = subprocess.run(
        [str(MVTRAIN), "sds", *args, "--out", str(tmp_path / "out")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


def test_sds_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom mvforge.cli.mvtrain import main\nsys.argv = ['mvtrain', 'sds', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'diffusers', 'trimesh', 'mcubes', 'imageio', 'av', 'bpy')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert "--prompt" in out.stdout and "--preview" in out.stdout and "HEAVY []" in out.stdout, out.stdout


def test_export_settings_are_honoured_and_no_surface_fails_fast_then_a_rerun_only_exports_and_bakes(
    tiny_mv, tmp_path
):
    import imageio.v3 as iio

    from mvforge.errors import UserError
    from mvforge.sds.config import ExportConfig

    export = ExportConfig(
        mc_resolution=12,
        iso_level=1e6,
        turntable_frames=3,
        turntable_resolution=14,
        turntable_fps=3,
        mp4=False,
    )
    cfg = tiny_sds_config(tiny_mv, tmp_path, max_steps=2, snapshot_every=0, export_mesh=export)
    with pytest.raises(UserError, match="no surface at density 1000000.0"):
        run_sds(cfg, show_progress=False)
    run_dir = tmp_path
    assert [p.name for p in checkpoints(run_dir)][-1] == "step-000002.pt"  # the steps are kept
    assert not (run_dir / "summary.json").exists() and not (run_dir / "turntable.gif").exists()

    # the re-run also bakes a UV texture (off by default)
    fixed = dataclasses.replace(
        cfg, export_mesh=dataclasses.replace(export, iso_level=5.0, uv_texture=True, texture_resolution=64)
    )
    run_sds(fixed, show_progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2  # no step re-run: only the export
    # the optimisation's figures come from the run that optimised (its last checkpoint), the export's apart
    ckpt = torch.load(checkpoints(run_dir)[-1], weights_only=False)
    assert (summary["seconds"], summary["peak_memory_mb"]) == (ckpt["seconds"], ckpt["peak_memory_mb"])
    assert summary["seconds"] > 0 and summary["export_seconds"] > 0
    frames = iio.imread(run_dir / "turntable.gif", index=None)
    assert frames.shape[:3] == (3, 14, 14)
    assert not (run_dir / "turntable.mp4").exists()
    glb = trimesh.load(run_dir / "mesh.glb", force="mesh")
    assert glb.visual.material.baseColorTexture.size == (64, 64) and (run_dir / "mesh.mtl").is_file()
    mesh = trimesh.load(run_dir / "mesh.obj", force="mesh")
    # the 12-cell grid: marching-cubes vertices have two coordinates on its lattice (Y-up swaps axes only)
    frac = (mesh.vertices + 1.0) * 12 / 2.0 % 1.0
    assert ((np.isclose(frac, 0.0, atol=1e-3) | np.isclose(frac, 1.0, atol=1e-3)).sum(axis=1) >= 2).all()

    # a third export without the texture leaves none of the second one's texture files behind
    plain = dataclasses.replace(cfg, export_mesh=dataclasses.replace(export, iso_level=5.0))
    run_sds(plain, show_progress=False)
    assert not (run_dir / "mesh.mtl").exists() and not list(run_dir.glob("material_*.png"))
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["seconds"] == summary["seconds"] and again["export_seconds"] > 0

    # the same run again, unchanged: nothing to do, not even the export (summary and mesh untouched)
    stamps = [(run_dir / n).stat().st_mtime_ns for n in ("summary.json", "mesh.glb")]
    assert run_sds(plain, show_progress=False) == run_dir
    assert [(run_dir / n).stat().st_mtime_ns for n in ("summary.json", "mesh.glb")] == stamps

    # resuming under settings that decide the field is refused, naming the first one that differs
    other = dataclasses.replace(plain, guidance=dataclasses.replace(plain.guidance, guidance_scale=3.0))
    with pytest.raises(UserError, match=r"other settings \(guidance.guidance_scale was 50.0, now 3.0\)"):
        run_sds(other, show_progress=False)
    with pytest.raises(UserError, match="other model weights"):
        run_sds(
            dataclasses.replace(plain, model=str(shutil.copytree(tiny_mv, tmp_path / "copy"))),
            show_progress=False,
        )


def test_resume_refuses_other_weights_at_the_same_path_and_a_max_steps_below_the_run(tiny_mv, tmp_path):
    import os

    from mvforge.errors import UserError

    model = shutil.copytree(tiny_mv, tmp_path / "model")
    cfg = tiny_sds_config(model, tmp_path / "sds", max_steps=2, snapshot_every=0, export=False)
    run_sds(cfg, show_progress=False)
    with pytest.raises(UserError, match="is at step 2; pass max_steps >= 2"):
        run_sds(dataclasses.replace(cfg, max_steps=1), show_progress=False)
    # the same path, spelled differently, is the same model ...
    run_sds(dataclasses.replace(cfg, model=str(model) + "/", max_steps=3), show_progress=False)
    # ... but rewritten weights (a fit run that went on, a re-saved pipeline) are another one
    weights = next((model / "unet").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="other model weights"):
        run_sds(dataclasses.replace(cfg, max_steps=4), show_progress=False)


def test_one_prompt_writes_into_out_itself_and_another_prompt_there_is_refused(tiny_mv, tmp_path):
    """--out is the run directory (docs/cli.md, "output"): no <prompt-slug>/ below it. The prompt decides the
    field, so another prompt into the same --out is refused in one line; the finished run is kept."""
    from mvforge.errors import UserError

    cfg = tiny_sds_config(tiny_mv, tmp_path / "mug", max_steps=2, export=False, snapshot_every=0)
    assert run_sds(cfg, show_progress=False) == tmp_path / "mug"
    assert (tmp_path / "mug" / "summary.json").is_file() and (tmp_path / "mug" / "config.toml").is_file()
    assert not (tmp_path / "mug" / "a-red-ceramic-mug").exists()
    with pytest.raises(UserError, match="prompt") as e:
        run_sds(dataclasses.replace(cfg, prompt="a blue chair"), show_progress=False)
    assert "\n" not in str(e.value)
    assert json.loads((tmp_path / "mug" / "summary.json").read_text())["prompt"] == "a red ceramic mug"


def test_one_prompt_run_and_a_prompts_batch_never_share_a_directory(tiny_mv, tmp_path):
    """--out is one prompt's run or a --prompts batch's directory, never both (docs/cli.md, "output"): the
    readers (report, eval --sds) would otherwise see only one of them."""
    from mvforge.errors import UserError
    from mvforge.sds.ray_prompts import run_prompts

    batch = tmp_path / "batch"
    (batch / "a-red-cone").mkdir(parents=True)
    (batch / "a-red-cone" / "config.toml").write_text("")
    with pytest.raises(UserError, match="is a --prompts batch directory"):
        run_sds(tiny_sds_config(tiny_mv, batch))
    single = tmp_path / "single"
    single.mkdir()
    (single / "config.toml").write_text("")
    with pytest.raises(UserError, match="is the run directory of one prompt"):
        run_prompts(tiny_sds_config(tiny_mv, single), ["a red cone"], [0])
