"""Many prompts at once: one Ray task per (prompt, seed), one GPU each (docs/design.md §4).

The same code runs on a laptop's local Ray and on a cluster (``--address``). Each task is ``run_sds`` on its own
run directory in the batch directory ``--out`` (``<out>/<prompt-slug>/``; mvforge/formats/sds_result.py), so a
re-run resumes every unfinished prompt and skips finished ones (``summary.json`` present). A task past its
timeout is cancelled and counted as failed; the driver shows a progress bar over prompts and ends with one
summary table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from mvforge.errors import UserError
from mvforge.formats import sds_result as result_format
from mvforge.formats.samples import prompt_dirs
from mvforge.sds.config import SDSConfig
from mvforge.sds.loop import finished_with


def _task_configs(cfg: SDSConfig, prompts: list[str], seeds: list[int]) -> list[SDSConfig]:
    """One config per (prompt, seed), its ``out`` the task's own run directory in the batch directory
    ``cfg.out`` (``<out>/<slug>/``, ``<out>/seed-S/<slug>/`` with several seeds; docs/cli.md, "output")."""
    out = []
    # Fails early on a prompt that cannot name a directory, and on two that name one: two tasks would write one
    # run directory at the same time.
    prompt_dirs(prompts, "run directory")
    for p in prompts:
        for s in seeds:
            run_dir = result_format.batch_run_dir(cfg.out, p, None if len(seeds) == 1 else s)
            out.append(dataclasses.replace(cfg, prompt=p, seed=s, out=str(run_dir)))
    return out


def _cause(e: Exception) -> str:
    """The task's error without Ray's banner and the exception's class path (one line, up to 400 characters)."""
    line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return line.removeprefix("mvforge.errors.UserError: ")[:400]


def run_prompts(
    cfg: SDSConfig,
    prompts: list[str],
    seeds: list[int],
    address: str | None = None,
    gpus_per_task: float | None = None,
    timeout_s: float = 0.0,
    workers: int | None = None,
) -> list[dict]:
    """Run every (prompt, seed) as a Ray task; returns one record per task (prompt, seed, status, seconds, dir).

    ``gpus_per_task``: None = 1 when ``cfg.device`` is cuda or auto and the cluster has GPUs, else 0 (CPU tasks).
    ``workers``: at most this many tasks in flight (None: as many as the cluster's GPUs, or CPUs, allow).
    Raises UserError when the tasks ask for GPUs the cluster does not have (Ray would queue them forever)."""
    import ray

    from mvforge.progress import StageProgress
    from mvforge.raytools import init_ray

    # 1. Arguments, the tasks, the cluster (checked before any task is submitted).
    if not cfg.model:
        raise UserError(
            "no model given; pass --model with an `mvtrain fit` run or a converted MVDream pipeline"
        )
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: pass 1 or more (tasks in flight at once)")
    if (Path(cfg.out) / result_format.CONFIG).is_file():
        # One prompt's run directory holds no batch: its readers would find only the run at the top.
        raise UserError(
            f"{cfg.out} is the run directory of one prompt; pass another --out for the --prompts batch"
        )
    tasks = _task_configs(cfg, prompts, seeds)
    if gpus_per_task is not None and gpus_per_task < 0:
        raise UserError(f"--gpus-per-worker {gpus_per_task}: use 0 (CPU) or a positive number of GPUs")
    init_ray(address)
    gpus_per_task = _gpus_per_task(cfg, gpus_per_task)

    # 2. Finished runs are skipped; the others run, at most ``slots`` at a time, each cancelled past its timeout.
    one, slots = _remote_run_sds(gpus_per_task), _slots(gpus_per_task, workers)
    records: list[dict] = []
    with StageProgress("sds prompts", total=len(tasks), unit="prompts") as bar:
        pool = _Pool(one, slots, bar, records)
        pool.queue = _unfinished(tasks, pool)
        while pool.queue or pool.pending:
            _submit(pool)
            ready, _ = ray.wait(list(pool.pending), num_returns=1, timeout=1.0)
            now = time.monotonic()
            _record_finished(pool, ready, now)
            if timeout_s > 0:
                _cancel_overdue(pool, now, timeout_s)
    _print_summary(records)
    return records


@dataclass
class _Pool:
    """The driver's loop state: the tasks waiting and in flight, and the records of those done."""

    one: object
    """The Ray remote function running one task (``_remote_run_sds``)."""
    slots: int
    """Tasks in flight at most (``_slots``)."""
    bar: object
    """The progress bar over prompts (advanced by each task's status)."""
    records: list[dict]
    """One record per task done (skipped, ok, failed, timeout), in the order they ended."""
    queue: list[tuple[SDSConfig, Path]] = field(default_factory=list)
    """Tasks not yet submitted: (config, run directory)."""
    pending: dict = field(default_factory=dict)
    """Ray ObjectRef -> (config, submit time from ``time.monotonic()``, run directory) of each task in flight."""


def _gpus_per_task(cfg: SDSConfig, gpus_per_task: float | None) -> float:
    """The GPUs each task asks Ray for (None: 1 when ``cfg.device`` is not cpu and the cluster has GPUs, else 0).
    Raises UserError for more than the cluster has."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_task is None:
        gpus_per_task = 1.0 if cfg.device != "cpu" and cluster_gpus > 0 else 0.0
    if gpus_per_task > cluster_gpus:
        raise UserError(
            f"--gpus-per-worker {gpus_per_task:g} but the Ray cluster has {cluster_gpus:g} GPUs; "
            "pass --gpus-per-worker 0 to run on CPUs"
        )
    return gpus_per_task


def _remote_run_sds(gpus_per_task: float):
    """The Ray remote function of one task: ``run_sds`` on the task's config without progress output, returning
    its run directory as a string; ``gpus_per_task`` GPUs each, never retried (a failure is reported)."""
    import ray

    @ray.remote(num_gpus=gpus_per_task, max_retries=0)
    def one(task_cfg: SDSConfig) -> str:
        from mvforge.sds.loop import run_sds

        return str(run_sds(task_cfg, show_progress=False))

    return one


def _slots(gpus_per_task: float, workers: int | None) -> int:
    """How many tasks to keep in flight: what the cluster's GPUs (or CPUs, for CPU tasks) run at once, at most
    ``workers``, at least 1."""
    import ray

    # Submit only as many tasks as can run at once, so a task's timeout counts its run, not its queueing.
    res = ray.cluster_resources()
    slots = int(res.get("GPU", 0) // gpus_per_task) if gpus_per_task > 0 else int(res.get("CPU", 1))
    return max(min(slots, workers or slots), 1)


def _unfinished(tasks: list[SDSConfig], pool: _Pool) -> list[tuple[SDSConfig, Path]]:
    """(config, run directory) of the tasks whose run is not finished with the same settings; each finished one
    is recorded as skipped."""
    queue = []
    for tc in tasks:
        run_dir = Path(tc.out)
        if finished_with(run_dir, tc):
            pool.records.append(
                {"prompt": tc.prompt, "seed": tc.seed, "status": "skipped", "dir": str(run_dir)}
            )
            pool.bar.advance("skipped")
        else:
            queue.append((tc, run_dir))
    return queue


def _submit(pool: _Pool) -> None:
    """Submit queued tasks, in order, until ``pool.slots`` are in flight."""
    while pool.queue and len(pool.pending) < pool.slots:
        tc, run_dir = pool.queue.pop(0)
        pool.pending[pool.one.remote(tc)] = (tc, time.monotonic(), run_dir)


def _record(tc: SDSConfig, run_dir: Path, status: str, seconds: float, error: str) -> dict:
    """The record of a task that ran: ``seconds`` since its submission, rounded to 0.1 s."""
    return {
        "prompt": tc.prompt,
        "seed": tc.seed,
        "status": status,
        "seconds": round(seconds, 1),
        "dir": str(run_dir),
        "error": error,
    }


def _record_finished(pool: _Pool, ready: list, now: float) -> None:
    """Record the tasks of ``ready`` (Ray refs that finished) as ok, or failed with their error's last line."""
    import ray

    for ref in ready:
        tc, t0, run_dir = pool.pending.pop(ref)
        try:
            ray.get(ref)
            status, error = "ok", ""
        except Exception as e:  # a failed prompt must not stop the others; it is reported below
            status, error = "failed", _cause(e)
        pool.records.append(_record(tc, run_dir, status, now - t0, error))
        pool.bar.advance(status)


def _cancel_overdue(pool: _Pool, now: float, timeout_s: float) -> None:
    """Cancel (force) and record as timeout every task in flight for more than ``timeout_s`` seconds."""
    import ray

    for ref, (tc, t0, run_dir) in list(pool.pending.items()):
        if now - t0 > timeout_s:
            ray.cancel(ref, force=True)
            pool.pending.pop(ref)
            pool.records.append(_record(tc, run_dir, "timeout", now - t0, "timeout"))
            pool.bar.advance("timeout")


def _print_summary(records: list[dict]) -> None:
    """One row per task: its status and, for ok and skipped runs, their summary.json's seconds, else the error."""
    from mvforge.progress import print_summary

    rows = []
    for r in records:
        extra = ""
        summary = Path(r["dir"]) / result_format.SUMMARY
        if r["status"] in ("ok", "skipped") and summary.is_file():
            extra = f"{json.loads(summary.read_text())['seconds']} s"
        rows.append(
            (f"{r['prompt']} (seed {r['seed']})", f"{r['status']} {extra or r.get('error', '')}".strip())
        )
    print_summary("mvtrain sds", rows)
