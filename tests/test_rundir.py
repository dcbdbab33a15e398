"""One writer per output directory, for every stage (docs/reliability.md): a second run is refused in one line
naming the holder, and a lock left by a killed process frees itself."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mvforge import rundir
from mvforge.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _holder(out: Path, command: str) -> subprocess.Popen:
    """Another process holding ``out``'s lock (a concurrent run, as far as the lock can tell) until killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from mvforge import rundir
        with rundir.exclusive({str(out)!r}, {command!r}):
            print("held", flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def held(tmp_path):
    procs: list[subprocess.Popen] = []

    def hold(out: Path, command: str = "mvtrain fit") -> subprocess.Popen:
        procs.append(_holder(out, command))
        return procs[-1]

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_holder_is_refused_and_a_killed_holders_lock_frees_itself(tmp_path, held):
    out = tmp_path / "run"
    proc = held(out, "mvdata shard")
    with pytest.raises(UserError, match=rf"`mvdata shard` \(pid {proc.pid} on .*\) is writing {out}; wait"):
        with rundir.exclusive(out, "mvdata shard"):
            pass
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the flock
    proc.wait()
    with rundir.exclusive(out, "mvdata shard") as locked:
        assert locked == out and (out / rundir.LOCK).is_file()


def _stage_runs(tmp_path: Path, tiny_sd: Path) -> dict:
    """name -> (run into OUT, the directory that run locks): every stage's entry point, with real inputs."""
    from typer.testing import CliRunner

    from mvforge.cli.mvtrain import app as mvtrain
    from mvforge.eval.config import EvalConfig
    from mvforge.eval.run import run_eval
    from mvforge.filter.config import FilterConfig
    from mvforge.filter.pipeline import run_filter
    from mvforge.render.config import RenderConfig
    from mvforge.render.driver import render
    from mvforge.render.plan import SourceObject
    from mvforge.sds.loop import run_sds
    from mvforge.shards.config import ShardConfig
    from mvforge.shards.writer import run_shard
    from mvforge.train.dreambooth import dreambooth
    from mvforge.train.dreambooth_config import DreamBoothConfig
    from mvforge.train.loop import fit
    from mvforge.train.ray_fit import fit_with_ray
    from tests.fixtures.synthetic import write_synthetic_render_dir
    from tests.sds.conftest import tiny_sds_config
    from tests.train.conftest import fit_config

    renders = tmp_path / "renders"
    write_synthetic_render_dir(renders, 1, views=4, resolution=16)
    glb = SourceObject(uid="box", kind="local", ext="glb", path=str(ROOT / "tests/data/glb/BoxTextured.glb"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")

    def sample(out):
        args = ["sample", "--model", str(model), "--prompt", "a mug", "--out", str(out), "--device", "cpu"]
        result = CliRunner().invoke(mvtrain, args)
        raise result.exception

    return {
        "render": lambda out: render([glb], out, RenderConfig(), show_progress=False),
        "filter": lambda out: run_filter(renders, out, FilterConfig(), progress=False),
        "shard": lambda out: run_shard(renders, str(out), ShardConfig(workers=0), show_progress=False),
        "fit": lambda out: fit(fit_config(tiny_sd, tmp_path / "no-shards", out)),
        "fit --workers": lambda out: fit_with_ray(fit_config(tiny_sd, tmp_path / "no-shards", out), 1),
        "dreambooth": lambda out: dreambooth(
            DreamBoothConfig(pretrained=str(tiny_sd), images=str(tmp_path), prompt="a sks mug", out=str(out))
        ),
        "sds": lambda out: run_sds(tiny_sds_config(tiny_sd, out)),
        "eval": lambda out: run_eval(None, "m", renders, out, EvalConfig(), None, None),
        "sample": sample,
    }


def test_every_stage_refuses_a_directory_another_run_writes(tmp_path, held, tiny_sd):
    for name, run in _stage_runs(tmp_path, tiny_sd).items():
        out = tmp_path / name.replace(" ", "")
        held(out)
        with pytest.raises(UserError, match=r"`mvtrain fit` \(pid \d+ on .*\) is writing"):
            run(out)


def test_every_stage_says_a_read_only_out_in_one_line(tmp_path, tiny_sd, monkeypatch):
    """A read-only mount, injected: writes under ``ro/`` fail with EROFS as on a real one."""
    ro = tmp_path / "ro"
    real_open, real_mkdir = os.open, os.mkdir

    def ro_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(ro)) and not os.path.exists(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    runs = _stage_runs(tmp_path, tiny_sd)
    for name in runs:
        (ro / name.replace(" ", "")).mkdir(parents=True)
    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    for name, run in runs.items():
        out = ro / name.replace(" ", "")
        with pytest.raises(
            UserError,
            match=rf"^{out}/\S* is on a read-only file system; pass a writable --out \(RUN_DIR for mvdata report\)$",
        ):
            run(out)


def test_a_run_refused_for_bad_input_leaves_no_directory_behind(tmp_path, tiny_sd):
    from mvforge.train.loop import fit
    from tests.train.conftest import fit_config

    out = tmp_path / "runs" / "mv"
    with pytest.raises(UserError, match="no training shards"):
        fit(fit_config(tiny_sd, "", out))
    assert not (tmp_path / "runs").exists()


# --- RunDir: one "resume only with the same settings" for the model wing ------------------------------------


def _ckpt(run: rundir.RunDir, step: int, body: bytes = b"ok") -> Path:
    path = run.checkpoint_path(step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


def test_rundir_resumes_the_same_content_and_refuses_other_content_naming_the_key(tmp_path):
    content = {"seed": 0, "optim": {"lr": 1e-4, "betas": (0.9, 0.99)}, "device": "cpu", "max_steps": 10}
    run = rundir.RunDir.open(tmp_path / "run", content, "mvtrain fit", suffix=".pt")
    assert (run.path / rundir.CONFIG).is_file() and run.checkpoints() == []
    # nothing to resume yet: a run that died before its first checkpoint takes the new settings
    rundir.RunDir.open(run.path, {**content, "seed": 1}, "mvtrain fit", suffix=".pt")
    rundir.RunDir.open(run.path, content, "mvtrain fit", suffix=".pt")
    _ckpt(run, 5)
    # execution settings (rundir.EXECUTION_KEYS) may change; a tuple equals the list TOML reads back
    again = rundir.RunDir.open(
        run.path, {**content, "device": "cuda", "max_steps": 20}, "mvtrain fit", suffix=".pt"
    )
    assert again.saved_config()["max_steps"] == 20
    other = {**content, "optim": {"lr": 3e-4, "betas": (0.9, 0.99)}}
    with pytest.raises(
        UserError,
        match=r"^\S+/run was made by `mvtrain fit` with other settings \(optim.lr was 0.0001, now 0.0003\); "
        r"pass the same settings to resume it, or another --out$",
    ):
        rundir.RunDir.open(run.path, other, "mvtrain fit", suffix=".pt")
    assert rundir.RunDir(run.path).saved_config()["optim"]["lr"] == 1e-4  # the refused run wrote nothing
    # a key the stage compares another way is left out
    rundir.RunDir.open(
        run.path, {**content, "model": "x"}, "mvtrain sds", suffix=".pt", compared_elsewhere=("model",)
    )


def test_rundir_accepts_a_config_dataclass(tmp_path):
    from mvforge.sds.config import SDSConfig

    cfg = SDSConfig(prompt="a mug", out=str(tmp_path))
    run = rundir.RunDir.open(tmp_path / "run", cfg, "mvtrain sds")
    from mvforge import config as config_mod

    assert config_mod.load(SDSConfig, run.path / rundir.CONFIG) == cfg


def test_rundir_done_marker(tmp_path):
    run = rundir.RunDir.open(tmp_path / "run", {"seed": 0}, "mvtrain sds")
    assert not run.is_done() and run.summary() == {}
    run.mark_done({"steps": 3})
    assert run.is_done() and run.summary() == {"steps": 3}
    # a finished run counts as work to keep: other settings are refused even without a checkpoint
    with pytest.raises(UserError, match=r"other settings \(seed was 0, now 1\)"):
        rundir.RunDir.open(run.path, {"seed": 1}, "mvtrain sds")
    run.clear_done()
    assert not run.is_done()


def test_rundir_checkpoints_ignore_unfinished_writes_and_pick_the_newest_intact(tmp_path, capsys):
    run = rundir.RunDir(tmp_path, suffix=".pt")
    for step in (2, 10, 4):
        _ckpt(run, step)
    bad = _ckpt(run, 12, b"truncated")
    (run.path / rundir.CHECKPOINTS / "step-000014.pt.tmp-123").write_bytes(b"half")
    assert [run.step_of(p) for p in run.checkpoints()] == [2, 4, 10, 12]

    def check(path: Path) -> None:
        if path.read_bytes() != b"ok":
            raise rundir.Damaged(f"{path}: damaged")

    assert run.latest_intact_checkpoint(check) == run.checkpoint_path(10)
    assert f"skipping damaged checkpoint ({bad}: damaged)" in capsys.readouterr().err
    run.prune_checkpoints(2, protect={2})
    assert [run.step_of(p) for p in run.checkpoints()] == [2, 10, 12]
    # directory checkpoints (fit, dreambooth): a name with a dot is an unfinished write
    dirs = rundir.RunDir(tmp_path / "fit")
    dirs.checkpoint_path(100).mkdir(parents=True)
    (dirs.path / rundir.CHECKPOINTS / "step-000200.tmp").mkdir()
    assert dirs.checkpoints() == [dirs.checkpoint_path(100)]
    assert rundir.RunDir(tmp_path / "none").latest_intact_checkpoint(check) is None


def test_rundir_compare_only_and_kept_work(tmp_path):
    """`mvtrain eval`: only the model and sampling settings made the kept images; its own test of kept work."""
    doc = {"model": "tiny", "sample": {"seed": 1}, "kid_subsets": 10}
    path = tmp_path / "eval"
    rundir.RunDir.open(path, doc, "mvtrain eval", compare_only=("model", "sample"), kept=False)
    rundir.RunDir.open(
        path, {**doc, "kid_subsets": 5}, "mvtrain eval", compare_only=("model", "sample"), kept=True
    )
    with pytest.raises(UserError, match=r"other settings \(model was 'tiny', now 'big'\)"):
        rundir.RunDir.open(
            path, {**doc, "model": "big"}, "mvtrain eval", compare_only=("model", "sample"), kept=True
        )
    # nothing kept: the new settings replace the old
    rundir.RunDir.open(
        path, {**doc, "model": "big"}, "mvtrain eval", compare_only=("model", "sample"), kept=False
    )
    assert rundir.RunDir(path).saved_config()["model"] == "big"


def test_check_resume_is_the_one_comparison_for_the_data_wing_too(tmp_path):
    """render, filter and shard compare their saved settings through rundir.check_resume, with the one list of
    execution settings; a stage's own wording and its "redo the kept work" flag go through its arguments."""
    saved = {
        "resolution": 32,
        "cycles": {"samples": 8, "threads": 1, "adaptive_sampling": "off"},
        "lighting": {},
    }
    saved["lighting"] = {"kind": "hdri", "exposure": 1.0}
    faster = {**saved, "cycles": {**saved["cycles"], "threads": 8}, "limits": {"timeout_s": 5}}
    assert rundir.check_resume(saved, faster, "mvdata render", tmp_path, kept=True) == ""
    # nothing recorded, or no work kept under it: the new settings are taken
    assert rundir.check_resume(None, {"resolution": 64}, "mvdata render", tmp_path, kept=True) == ""
    assert rundir.check_resume(saved, {"resolution": 64}, "mvdata render", tmp_path, kept=False) == ""
    lamps = {**saved, "resolution": 64, "lighting": {"kind": "lamps", "ambient": 0.1}}
    kw = {"first": ("lighting.kind",), "last": ("cycles.adaptive_sampling",)}
    with pytest.raises(
        UserError, match=r"^\S+ holds renders made with other settings \(lighting.kind was 'hdri', "
    ):
        rundir.check_resume(saved, lamps, "mvdata render", tmp_path, True, made="holds renders made", **kw)
    quicker = {**saved, "cycles": {**saved["cycles"], "samples": 4, "adaptive_sampling": "on"}}
    with pytest.raises(UserError, match=r"\(cycles.samples was 8, now 4\); pass the same settings to resume"):
        rundir.check_resume(saved, quicker, "mvdata render", tmp_path, True, **kw)
    # the stage was told to redo the kept work: the difference comes back for its own rules
    diff = rundir.check_resume(saved, quicker, "mvdata render", tmp_path, True, replace=True, **kw)
    assert diff == "cycles.samples was 8, now 4"
    with pytest.raises(
        UserError, match=r"was made by `mvdata shard` with other settings \(seed was 0, now 1\)"
    ):
        rundir.check_resume(
            {"seed": 0, "workers": 2}, {"seed": 1, "workers": 4}, "mvdata shard", tmp_path, True
        )


def test_check_resume_takes_a_dict_with_none_as_toml_reads_it_back(tmp_path):
    """filter's scoring key holds None (no model_config_file) and was saved as JSON null."""
    key = {"model": "ViT-B-32", "model_config_file": None, "text": {"fields": ("caption", "name")}}
    saved = {"model": "ViT-B-32", "model_config_file": None, "text": {"fields": ["caption", "name"]}}
    assert rundir.check_resume(saved, key, "mvdata filter", tmp_path, kept=True) == ""
    with pytest.raises(UserError, match=r"\(model was 'ViT-B-32', now 'ViT-L-14'\)"):
        rundir.check_resume(saved, {**key, "model": "ViT-L-14"}, "mvdata filter", tmp_path, kept=True)


def test_content_settings_drop_the_execution_settings():
    doc = {"seed": 0, "workers": 2, "cycles": {"samples": 8, "threads": 4}, "limits": {"timeout_s": 5}}
    assert rundir.content_settings(doc) == {"seed": 0, "cycles": {"samples": 8}}
    # the loader's shard cache changes where the bytes come from, not the batches (tests/shards/test_loader.py)
    fit = {"loader": {"batch_size": 4, "cache_mb": 256.0}}
    assert rundir.content_settings(fit) == {"loader": {"batch_size": 4}}


def test_an_out_where_no_directory_can_be_made_is_one_line():
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    with pytest.raises(UserError, match=r"^cannot create /proc/mvforge-out \(.*\); pass another --out$"):
        rundir.make_out_dir("/proc/mvforge-out/run")


def test_an_unwritable_temporary_copy_is_named_as_the_output_it_becomes(tmp_path):
    out = tmp_path / "model"
    for errno_, said in ((errno.EACCES, "permission denied: {}"), (errno.EROFS, "{} is on a read-only")):
        err = rundir.environment_error(OSError(errno_, os.strerror(errno_), f"{out}.tmp-4242-vae"))
        assert str(err).startswith(said.format(out)) and ".tmp-" not in str(err)
    url = rundir.environment_error(OSError(errno.EACCES, "denied", "s3://bucket/run/x.json.tmp-7"))
    assert str(url).startswith("permission denied: s3://bucket/run/x.json;")
    plain = rundir.environment_error(OSError(errno.ENOSPC, "full", str(out / "a.png")))
    assert str(plain).startswith(f"disk full writing {out / 'a.png'};")


def test_missing_object_store_credentials_are_one_line_wherever_they_are_wrapped():
    """botocore's NoCredentialsError (s3:// without credentials), raised directly or inside another error as a
    Ray task's is, becomes the CLI's one-line error naming the fix."""
    from mvforge.rundir import environment_error_in

    class NoCredentialsError(Exception):  # botocore's name; matched by name
        pass

    try:
        try:
            raise NoCredentialsError("Unable to locate credentials")
        except NoCredentialsError as inner:
            raise RuntimeError("shard task failed") from inner
    except RuntimeError as outer:
        err = environment_error_in(outer)
    assert err is not None and "no credentials" in str(err) and "AWS_ACCESS_KEY_ID" in str(err)
    assert environment_error_in(ValueError("a bug")) is None
