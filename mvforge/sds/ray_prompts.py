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

    from mvforge.progress import StageProgress, print_summary
    from mvforge.raytools import init_ray

    if not cfg.model:
        raise UserError(
            "no model given; pass --model with an `mvtrain fit` run or a converted MVDream pipeline"
        )
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: pass 1 or more (tasks in flight at once)")
    tasks = _task_configs(cfg, prompts, seeds)
    if gpus_per_task is not None and gpus_per_task < 0:
        raise UserError(f"--gpus-per-worker {gpus_per_task}: use 0 (CPU) or a positive number of GPUs")
    init_ray(address)
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_task is None:
        gpus_per_task = 1.0 if cfg.device != "cpu" and cluster_gpus > 0 else 0.0
    if gpus_per_task > cluster_gpus:
        raise UserError(
            f"--gpus-per-worker {gpus_per_task:g} but the Ray cluster has {cluster_gpus:g} GPUs; "
            "pass --gpus-per-worker 0 to run on CPUs"
        )

    @ray.remote(num_gpus=gpus_per_task, max_retries=0)
    def one(task_cfg: SDSConfig) -> str:
        from mvforge.sds.loop import run_sds

        return str(run_sds(task_cfg, show_progress=False))

    records: list[dict] = []
    pending = {}
    # Submit only as many tasks as can run at once, so a task's timeout counts its run, not its queueing.
    res = ray.cluster_resources()
    slots = int(res.get("GPU", 0) // gpus_per_task) if gpus_per_task > 0 else int(res.get("CPU", 1))
    slots = max(min(slots, workers or slots), 1)
    queue = []
    with StageProgress("sds prompts", total=len(tasks), unit="prompts") as bar:
        for tc in tasks:
            run_dir = Path(tc.out)
            if finished_with(run_dir, tc):
                records.append(
                    {"prompt": tc.prompt, "seed": tc.seed, "status": "skipped", "dir": str(run_dir)}
                )
                bar.advance("skipped")
            else:
                queue.append((tc, run_dir))
        while queue or pending:
            while queue and len(pending) < slots:
                tc, run_dir = queue.pop(0)
                pending[one.remote(tc)] = (tc, time.monotonic(), run_dir)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            now = time.monotonic()
            for ref in ready:
                tc, t0, run_dir = pending.pop(ref)
                try:
                    ray.get(ref)
                    status, error = "ok", ""
                except Exception as e:  # a failed prompt must not stop the others; it is reported below
                    status, error = "failed", _cause(e)
                records.append(
                    {
                        "prompt": tc.prompt,
                        "seed": tc.seed,
                        "status": status,
                        "seconds": round(now - t0, 1),
                        "dir": str(run_dir),
                        "error": error,
                    }
                )
                bar.advance(status)
            if timeout_s > 0:
                for ref, (tc, t0, run_dir) in list(pending.items()):
                    if now - t0 > timeout_s:
                        ray.cancel(ref, force=True)
                        pending.pop(ref)
                        records.append(
                            {
                                "prompt": tc.prompt,
                                "seed": tc.seed,
                                "status": "timeout",
                                "seconds": round(now - t0, 1),
                                "dir": str(run_dir),
                                "error": "timeout",
                            }
                        )
                        bar.advance("timeout")
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
    return records
