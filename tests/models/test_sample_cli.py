"""`mvtrain sample` through the installed entry point on the tiny multi-view pipeline (CPU), and its help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mvforge.errors import UserError
from mvforge.models.config import SampleConfig
from mvforge.models.sample import sample_prompts
from mvforge.rundir import LOCK

MVTRAIN = str(Path(sys.executable).with_name("mvtrain"))
FAST = ["--steps", "2", "--resolution", "16", "--device", "cpu"]


def _mvtrain(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MVTRAIN, *args], capture_output=True, text=True, cwd=cwd)


def test_sample_cli_defaults_files_and_equality_with_the_api(tiny_mv, tmp_path):
    proc = _mvtrain(
        "sample", "--model", str(tiny_mv), "--prompt", "a chair", "--out", str(tmp_path / "cli"), *FAST
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "cli"
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK) == ["grid.png", "sample.json"] + [
        f"view_{i:02d}.png" for i in range(4)
    ]
    meta = json.loads((out / "sample.json").read_text())
    c = meta["config"]
    # The official inference's settings (design §10) unless a flag says otherwise.
    assert (c["scheduler"], c["eta"], c["guidance_scale"], c["negative_prompt"]) == ("ddim", 0.0, 10.0, "")
    assert (c["elevation_deg"], c["azimuth_start_deg"], c["num_views"], c["seed"]) == (15.0, 90.0, 4, 23)
    assert meta["text"] == "a chair, 3d asset" and c["steps"] == 2 and c["resolution"] == 16
    # The same views as the Python API with the same settings.
    cfg = SampleConfig(steps=2, resolution=16)
    (api,) = sample_prompts(tiny_mv, ["a chair"], tmp_path / "api", cfg, show_progress=False)
    for name in ("grid.png", "view_03.png"):
        assert (api / name).read_bytes() == (out / name).read_bytes()


def test_sample_cli_prompts_file_scheduler_and_save_pipeline(tiny_mv, tmp_path, dead_pid):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red chair\n# a comment\n\nA Lamp!\n")
    args = [
        "--prompts",
        str(prompts),
        "--out",
        str(tmp_path / "out"),
        "--scheduler",
        "euler-a",
        "--num-views",
        "2",
    ]
    leftover = tmp_path / f"pipe.tmp-{dead_pid}"  # what a killed save left: removed by the next one
    (leftover / "unet").mkdir(parents=True)
    proc = _mvtrain(
        "sample", "--model", str(tiny_mv), *args, "--save-pipeline", str(tmp_path / "pipe"), *FAST
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        not leftover.exists() and f"removed {leftover}: the unfinished copy of a killed save" in proc.stderr
    )
    dirs = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != LOCK)
    assert dirs == ["a-lamp", "a-red-chair"]  # named by the prompt, as `mvtrain sds` names its runs
    assert json.loads((tmp_path / "out" / dirs[0] / "sample.json").read_text())["prompt"] == "A Lamp!"
    assert len(list((tmp_path / "out" / dirs[1]).glob("view_*.png"))) == 2
    assert (tmp_path / "pipe" / "model_index.json").is_file()  # its round trip: tests/models/test_pipeline.py
    # The same command again keeps the pipeline it wrote; a pipeline from other weights there is refused.
    stamp = (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    leftover.mkdir()  # also when the rerun keeps the pipeline
    again = _mvtrain(
        "sample", "--model", str(tiny_mv), *args, "--save-pipeline", str(tmp_path / "pipe"), *FAST
    )
    assert again.returncode == 0 and "was written from these weights; kept as it is" in again.stderr
    assert not leftover.exists() and f"removed {leftover}" in again.stderr
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    other = _mvtrain(
        "sample", "--model", str(tmp_path / "pipe"), *args, "--save-pipeline", str(tmp_path / "pipe"), *FAST
    )
    assert other.returncode == 2 and "is not empty; pass a new directory for the pipeline" in other.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nope", "--prompt", "x"], "does not exist"),
        (["--model", "{mv}", "--prompt", "x", "--prompts", "{tmp}/p.txt"], "exactly one of"),
        (["--model", "{mv}", "--prompt", "x", "--scheduler", "lms"], "scheduler"),
        (["--model", "{mv}", "--prompt", "x", "--precision", "fp16"], "needs a CUDA GPU"),
        (["--model", "{mv}", "--prompts", "{tmp}/missing.txt"], "one prompt per line"),
        # NaN guidance wrote black views and a sample.json that is not valid JSON.
        (
            ["--model", "{mv}", "--prompt", "x", "--guidance-scale", "nan"],
            "guidance_scale: expected a finite number, got nan",
        ),
        (
            ["--model", "{mv}", "--prompt", "x", "--elevation", "inf"],
            "elevation_deg: expected a finite number, got inf",
        ),
        (["--model", "{mv}", "--prompt", "x", "--set", "eta=-1"], "eta -1.0: DDIM's eta must be in 0..1"),
        (["--model", "{mv}", "--prompts", "{tmp}"], "is a directory; pass a text file"),
        (["--model", "{mv}", "--prompts", "{tmp}/latin1.txt"], "latin1.txt is not UTF-8 (byte 5)"),
    ],
)
def test_sample_cli_bad_input_is_one_line_exit_2(tiny_mv, tmp_path, args, message):
    (tmp_path / "latin1.txt").write_bytes("a caf\u00e9 chair\n".encode("latin-1"))
    args = [a.format(tmp=tmp_path, mv=tiny_mv) for a in args]
    proc = _mvtrain("sample", *args, "--out", str(tmp_path / "o"), "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error:") and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_sample_rejects_zero_views_before_loading(tmp_path):
    with pytest.raises(UserError, match="num_views 0"):
        sample_prompts(tmp_path / "no-model", ["a chair"], tmp_path / "o", SampleConfig(num_views=0))
    with pytest.raises(UserError, match="seed -1: pass 0 or more"):
        sample_prompts(tmp_path / "no-model", ["a chair"], tmp_path / "o", SampleConfig(seed=-1))


def test_sample_help_imports_no_torch_and_names_the_authors_defaults():
    """`mvtrain --help` and `mvtrain sample --help` import none of the heavy libraries."""
    for argv in (["mvtrain", "--help"], ["mvtrain", "sample", "--help"]):
        code = (
            f"import sys\nfrom mvforge.cli.mvtrain import main\nsys.argv = {argv!r}\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'ray', 'bpy', 'open_clip', 'PIL')"
            " if m in sys.modules]\nprint('HEAVY', heavy)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"COLUMNS": "200"}
        ).stdout
        assert "HEAVY []" in out, out
    assert "authors'" in out and "--scheduler" in out and "--prompts" in out


def test_sample_resumes_finished_prompts_and_redoes_changed_ones(tiny_mv, tmp_path):
    cfg = SampleConfig(steps=2, resolution=16, num_views=2)
    prompts = ["a red chair", "a lamp"]
    dirs = sample_prompts(tiny_mv, prompts, tmp_path / "o", cfg, show_progress=False, resume=True)
    stamps = {d: (d / "view_00.png").stat().st_mtime_ns for d in dirs}
    (dirs[1] / "sample.json").unlink()  # as if killed before the second prompt finished
    again = sample_prompts(tiny_mv, prompts, tmp_path / "o", cfg, show_progress=False, resume=True)
    assert again == dirs
    assert (dirs[0] / "view_00.png").stat().st_mtime_ns == stamps[dirs[0]]  # finished: not sampled again
    assert (dirs[1] / "view_00.png").stat().st_mtime_ns != stamps[dirs[1]]
    assert (dirs[1] / "sample.json").is_file()
    # Another seed is another result: every prompt is sampled again.
    sample_prompts(
        tiny_mv, prompts, tmp_path / "o", SampleConfig(steps=2, resolution=16, num_views=2, seed=1)
    )
    assert json.loads((dirs[0] / "sample.json").read_text())["config"]["seed"] == 1


def test_an_interrupted_resample_is_not_taken_as_done_and_fewer_views_leave_no_old_ones(
    tiny_mv, tmp_path, monkeypatch, capsys
):
    import torch

    from mvforge.models import sample as sample_mod
    from mvforge.models.pipeline import MultiViewDiffusion

    mvd = MultiViewDiffusion.from_pretrained(tiny_mv, torch.device("cpu"), torch.float32)
    out = tmp_path / "o"
    old = SampleConfig(steps=1, resolution=16, num_views=3)
    sample_prompts(mvd, ["a chair"], out, old, show_progress=False, resume=True)
    # Re-sample with another seed, killed right after its first view: the old marker must be gone by then.
    new = SampleConfig(steps=1, resolution=16, num_views=3, seed=1)
    write = sample_mod.atomic_write_bytes

    class Killed(Exception):
        pass

    def write_then_die(path, data):
        write(path, data)
        raise Killed

    monkeypatch.setattr(sample_mod, "atomic_write_bytes", write_then_die)
    with pytest.raises(Killed):
        sample_prompts(mvd, ["a chair"], out, new, show_progress=False, resume=True)
    assert "config.seed was 23, now 1" in capsys.readouterr().err  # overwriting, said in one line
    assert not (out / "sample.json").exists()
    monkeypatch.undo()
    stamp = (out / "view_01.png").stat().st_mtime_ns
    sample_prompts(mvd, ["a chair"], out, new, show_progress=False, resume=True)
    assert (out / "view_01.png").stat().st_mtime_ns != stamp  # sampled again, not skipped as done
    assert json.loads((out / "sample.json").read_text())["config"]["seed"] == 1
    assert capsys.readouterr().err == ""  # no marker: an unfinished prompt, not one with other settings
    # Fewer views: the old view_02.png goes, so the directory holds exactly what sample.json says.
    sample_prompts(
        mvd,
        ["a chair"],
        out,
        SampleConfig(steps=1, resolution=16, num_views=2, seed=1),
        show_progress=False,
        resume=True,
    )
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "sample.json", "view_00.png", "view_01.png"]


def test_sample_rejects_a_resolution_the_vae_cannot_halve(tmp_path):
    for bad in (100, -8):
        with pytest.raises(UserError, match="multiple of 8 such as 256, or 0 for the model's native side"):
            sample_prompts(tmp_path / "no-model", ["a chair"], tmp_path / "o", SampleConfig(resolution=bad))


def test_the_default_side_is_the_models_own_and_sample_json_records_it(tiny_mv, tmp_path):
    from PIL import Image

    from mvforge.models.pipeline import MultiViewDiffusion

    native = MultiViewDiffusion.from_pretrained(tiny_mv).resolution
    assert (
        SampleConfig().resolution == 0 and native != 256
    )  # not the authors' 256 for a model that is not theirs
    (d,) = sample_prompts(tiny_mv, ["a chair"], tmp_path / "o", SampleConfig(steps=1, num_views=1))
    assert Image.open(d / "view_00.png").size == (native, native)
    assert json.loads((d / "sample.json").read_text())["config"]["resolution"] == native


def test_sample_cli_resume_is_keyed_on_the_weights_not_only_the_path(tiny_mv, tmp_path):
    import os

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red chair\na lamp\n")
    out = ["--prompts", str(prompts), "--out", str(tmp_path / "o"), *FAST]
    assert _mvtrain("sample", "--model", str(tiny_mv), *out).returncode == 0
    view = tmp_path / "o" / "a-red-chair" / "view_00.png"
    first = view.stat().st_mtime_ns
    # The same weights spelled as a relative path: sample.json's weights fingerprint matches, so nothing is redone.
    again = _mvtrain("sample", "--model", tiny_mv.name, *out, cwd=tiny_mv.parent)
    assert again.returncode == 0 and view.stat().st_mtime_ns == first
    assert "already done (skipped)" in again.stdout + again.stderr and "sampled again" not in again.stderr
    # The same path with rewritten weights (a run that gained a checkpoint, a re-saved pipeline): sampled again,
    # and the run says so, naming the setting that differs.
    weights = next((tiny_mv / "unet").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    third = _mvtrain("sample", "--model", str(tiny_mv), *out)
    assert third.returncode == 0 and view.stat().st_mtime_ns != first
    assert (
        "2 prompt(s) written with other settings are sampled again and overwritten (first: a-red-chair/, "
        "weights was " in third.stderr
    )


def test_prompt_dirs_follow_the_prompt_so_a_reordered_file_resumes_and_a_duplicate_is_refused(
    tiny_mv, tmp_path
):
    cfg = SampleConfig(steps=1, resolution=16, num_views=2)
    out = tmp_path / "o"
    first = sample_prompts(tiny_mv, ["a red chair", "a lamp"], out, cfg, show_progress=False, resume=True)
    stamps = [(d / "view_00.png").stat().st_mtime_ns for d in first]
    # Reordered, with a new prompt in between: the finished prompts are skipped and nothing is left behind.
    prompts = ["a lamp", "a new mug", "a red chair"]
    again = sample_prompts(tiny_mv, prompts, out, cfg, show_progress=False, resume=True, per_prompt=True)
    assert again == [out / "a-lamp", out / "a-new-mug", out / "a-red-chair"]
    assert sorted(p.name for p in out.iterdir()) == ["a-lamp", "a-new-mug", "a-red-chair"]
    assert [(d / "view_00.png").stat().st_mtime_ns for d in first] == stamps
    # A prompt listed twice (here up to case and punctuation) would be sampled twice into one directory: refused
    # before any model loads, as `mvtrain sds --prompts` refuses it.
    with pytest.raises(UserError, match=r"prompts 'a lamp' and 'A lamp\.' both name the directory a-lamp/"):
        sample_prompts(tmp_path / "no-model", ["a lamp", "A lamp."], out, cfg, show_progress=False)


def test_sample_cli_refuses_a_duplicate_prompt_in_one_line(tiny_mv, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red chair\na lamp\na red chair\n")
    proc = _mvtrain(
        "sample", "--model", str(tiny_mv), "--prompts", str(prompts), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2 and not (tmp_path / "o").exists()
    assert proc.stderr.strip().splitlines() == [
        "error: prompts 'a red chair' and 'a red chair' both name the directory a-red-chair/; remove the "
        "duplicate or reword one"
    ]
