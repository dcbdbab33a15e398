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
        held(out / "a-red-ceramic-mug" if name == "sds" else out)  # sds: one run directory per prompt
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
            UserError, match=rf"^{out}/\S* is on a read-only file system; pass a writable --out$"
        ):
            run(out)


def test_a_run_refused_for_bad_input_leaves_no_directory_behind(tmp_path, tiny_sd):
    from mvforge.train.loop import fit
    from tests.train.conftest import fit_config

    out = tmp_path / "runs" / "mv"
    with pytest.raises(UserError, match="no training shards"):
        fit(fit_config(tiny_sd, "", out))
    assert not (tmp_path / "runs").exists()
