"""--prompts: the prompt file and the per-task configs (the Ray scheduling itself is not exercised here)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from mvforge.cli.prompts import read_prompts
from mvforge.errors import UserError
from mvforge.sds.config import SDSConfig
from mvforge.sds.ray_prompts import _task_configs
from tests.sds.conftest import tiny_sds_config


def test_prompt_file_and_task_configs(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# demo prompts\na red mug\n\n  a blue chair  \n")
    prompts = read_prompts(f)
    assert prompts == ["a red mug", "a blue chair"]
    # --out is the batch's directory; each task's out is its own run directory in it (docs/cli.md, "output")
    one = _task_configs(SDSConfig(out="sds"), prompts, [0])
    assert [(c.prompt, c.seed, c.out) for c in one] == [
        ("a red mug", 0, "sds/a-red-mug"),
        ("a blue chair", 0, "sds/a-blue-chair"),
    ]
    two = _task_configs(SDSConfig(out="sds"), prompts[:1], [3, 4])
    assert [(c.seed, c.out) for c in two] == [(3, "sds/seed-3/a-red-mug"), (4, "sds/seed-4/a-red-mug")]


def test_bad_prompt_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="no letters or digits"):
        _task_configs(SDSConfig(), ["!!!"], [0])
    # Not a file: say what the path is (a FIFO is never opened: reading one would block).
    with pytest.raises(UserError, match="is a directory; pass a text file"):
        read_prompts(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UserError, match="fifo is a FIFO; pass a text file"):
        read_prompts(tmp_path / "fifo")
    (tmp_path / "latin1.txt").write_bytes("a red mug\na caf\u00e9 chair\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.txt is not UTF-8 \(byte 15\); save it as UTF-8"):
        read_prompts(tmp_path / "latin1.txt")


def test_a_byte_order_mark_does_not_reach_the_prompt(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffa red mug\n".encode())
    assert read_prompts(tmp_path / "bom.txt") == ["a red mug"]


def test_duplicate_prompts_are_refused_before_two_tasks_share_a_directory():
    with pytest.raises(UserError, match="both name the run directory a-red-mug/"):
        _task_configs(SDSConfig(out="sds"), ["a red mug", "A red mug!"], [0])


def test_prompts_run_as_ray_tasks_on_a_cpu_only_cluster_then_skip_when_done(tiny_mv, tmp_path, monkeypatch):
    """The default asks for no GPU where the cluster has none (it used to queue forever); asking for one is a
    one-line error; a second call skips the finished prompts."""
    from mvforge.sds.ray_prompts import run_prompts

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = tiny_sds_config(tiny_mv, tmp_path / "sds", max_steps=2)
    prompts = ["a red mug", "a blue chair"]
    with pytest.raises(UserError, match="--gpus-per-worker 0"):
        run_prompts(cfg, prompts, [0], gpus_per_task=1.0)
    records = run_prompts(cfg, prompts, [0], workers=1)  # --workers 1: one task in flight at a time
    assert [r["status"] for r in records] == ["ok", "ok"], records
    assert all((tmp_path / "sds" / d / "summary.json").is_file() for d in ("a-red-mug", "a-blue-chair"))
    assert sorted(p.name for p in (tmp_path / "sds").iterdir()) == ["a-blue-chair", "a-red-mug"]
    assert [r["dir"] for r in records] == [str(tmp_path / "sds" / d) for d in ("a-red-mug", "a-blue-chair")]
    assert [r["status"] for r in run_prompts(cfg, prompts, [0])] == ["skipped", "skipped"]
    # Other settings are not "done": export settings re-export, settings that decide the field are refused.
    reexport = dataclasses.replace(cfg, export_mesh=dataclasses.replace(cfg.export_mesh, turntable_frames=2))
    assert [r["status"] for r in run_prompts(reexport, prompts[:1], [0])] == ["ok"]
    other = dataclasses.replace(cfg, guidance=dataclasses.replace(cfg.guidance, guidance_scale=3.0))
    (refused,) = run_prompts(other, prompts[:1], [0])
    assert refused["status"] == "failed" and refused["error"].startswith(
        f"{tmp_path / 'sds' / 'a-red-mug'} was"
    )


def test_the_readers_find_every_run_of_a_batch_and_a_single_run(tmp_path):
    """`mvtrain eval --sds` and the report take a run (--prompt writes into --out), a --prompts batch
    (``<slug>/``, ``seed-S/<slug>/``) or a parent of either; a run's own subdirectories are not searched."""
    from mvforge.eval.sds import find_results as eval_find
    from mvforge.formats.sds_result import find_results

    def run(path):
        (path / "snapshots").mkdir(parents=True)
        (path / "summary.json").write_text("{}")
        return path

    single = run(tmp_path / "single")
    (single / "checkpoints" / "x").mkdir(parents=True)
    (single / "checkpoints" / "x" / "summary.json").write_text("{}")  # inside a run: not another run
    batch = [run(tmp_path / "batch" / "a-red-mug"), run(tmp_path / "batch" / "a-blue-chair")]
    seeds = [run(tmp_path / "seeds" / f"seed-{s}" / "a-red-mug") for s in (3, 4)]
    assert find_results(single) == eval_find(single) == [single]
    assert find_results(tmp_path / "batch") == eval_find(tmp_path / "batch") == sorted(batch)
    assert find_results(tmp_path / "seeds") == seeds
    assert find_results(tmp_path) == sorted([*batch, single])  # a parent of batches: one level down
    assert find_results(tmp_path / "missing") == []
