"""`mvtrain fit --workers N`: the training loop under Ray Train (TorchTrainer + DDP, docs/design.md §4).

The loop (loop.py) knows nothing about Ray; this module builds its ``Runtime`` from the Ray Train context:
rank, device, DDP wrapping (``prepare_model``) and reporting (``ray.train.report`` of the metrics). Ray restarts
failed workers up to ``max_failures`` times; a restarted loop resumes from the run's latest checkpoint, so a
restart continues exactly where the last checkpoint left off.

A checkpoint is reported to Ray as a pointer (``POINTER``: a directory holding one JSON file with the checkpoint's
path), the pattern Ray Train itself suggests for checkpoints stored elsewhere (its ``report``, in the error for a
checkpoint outside its storage path). Reporting the checkpoint itself would make Ray copy it into its storage
path and keep every copy (it does not know ``keep_checkpoints``): more disk than the run's own checkpoints and a
synchronous copy on rank 0 at each checkpoint, for nothing, since the loop resumes from the run directory's own
checkpoints, on storage every node sees. ``Result.checkpoint`` is then the newest pointer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.errors import UserError
from mvforge.formats import runs
from mvforge.fsutil import atomic_write_text
from mvforge.train.config import FitConfig

POINTER = "mvforge_checkpoint.json"
"""The one file of a checkpoint reported to Ray Train: ``{"checkpoint": "<absolute path of the run's checkpoint>"}``."""
STOP = ".stop"
"""Written into the run directory by the driver on SIGTERM: the workers (threads of Ray Train workers, where no
signal handler can be installed) see it after their step, checkpoint and end; the driver then exits 143. A file,
because the run directory is on storage every node sees (see ``fit_with_ray``)."""


def _train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from mvforge.train.loop import FAULT_ENV, Preempted, Runtime, fit

    cfg = config_mod.from_dict(FitConfig, loop_config["cfg"])
    if loop_config.get(
        "fault"
    ):  # the driver's test fault hook (loop.FAULT_ENV), for workers of a running Ray
        os.environ[FAULT_ENV] = loop_config["fault"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()

    def wrap(model):
        # The graph is static on 2D steps too (loop.py adds 0 x the camera MLP's output), so plain DDP.
        return ray.train.torch.prepare_model(model)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "kind"}
        if checkpoint_dir is None or rank != 0:
            ray.train.report(metrics)
            return
        # A pointer, not the checkpoint (module docstring): Ray copies this directory of one small file.
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / POINTER).write_text(json.dumps({"checkpoint": str(Path(checkpoint_dir).resolve())}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    if rank == 0:  # one line per (re)start of the worker group: restarts after failures show here
        from mvforge.fsutil import append_jsonl
        from mvforge.models.resolve import latest_checkpoint

        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        ckpt = latest_checkpoint(cfg.out)
        append_jsonl(
            Path(cfg.out) / runs.WORKER_STARTS,
            {"world_size": ctx.get_world_size(), "resume": str(ckpt or "")},
        )
    stop_file = Path(cfg.out) / STOP
    rt = Runtime(
        rank=rank,
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=wrap,
        report=report,
        show_progress=False,
        stop_requested=stop_file.exists,
    )
    try:
        fit(cfg, rt)
    except Preempted:
        pass  # the checkpoint is written and reported; the driver exits 143


# The driver holds the run directory's lock for its workers (they run fit with a Runtime: no lock there).
@rundir.locked("mvtrain fit", lambda cfg, **_: cfg.out)
def fit_with_ray(
    cfg: FitConfig,
    workers: int,
    use_gpu: bool = False,
    address: str | None = None,
    max_failures: int = 0,
    storage_path: str | None = None,
):
    """Run ``fit`` on ``workers`` Ray Train workers (one per GPU with ``use_gpu``); returns Ray's Result.

    ``max_failures``: restarts after a worker dies; each restart resumes from the run's latest checkpoint
    (loop.py), so the data order and the final weights are those of an uninterrupted run. ``storage_path``:
    where Ray Train keeps its results and checkpoint pointers (shared storage or an fsspec URL such as
    ``s3://bucket/runs``; default ``<out>/ray_results``). The run directory ``cfg.out`` itself must be on
    storage every node sees. Raises UserError when a local Ray (no ``address``) has fewer CPUs (GPUs with
    ``use_gpu``) than ``workers``; a cluster that small is waited on, and the wait is said on stderr (an
    autoscaler may add nodes)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mvforge.raytools import init_ray
    from mvforge.train.loop import FAULT_ENV, checked_inputs

    # A missing model or shards is one line here, before Ray starts, not a traceback from inside a worker;
    # the model comes back absolute (or a Hub id, resolved through the cache on every node).
    cfg = checked_inputs(cfg)
    import ray

    ours = not (ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"))
    init_ray(address)
    check_cluster_size(workers, use_gpu, local=ours)
    out = Path(cfg.out).resolve()
    # Workers must see the run directory: absolute paths, the same on every node (shared storage on a cluster).
    cfg = config_mod.replace(
        cfg,
        out=str(out),
        shards=_abs(cfg.shards),
        shards_2d=_abs(cfg.shards_2d) if cfg.shards_2d else None,
    )
    stop_file = out / STOP
    stop_file.unlink(missing_ok=True)  # a killed run's request; this one holds the lock
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cfg": config_mod.to_dict(cfg), "fault": os.environ.get(FAULT_ENV, "")},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=out.name,
            storage_path=storage_path or str(out / runs.RAY_RESULTS),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    # SIGTERM (Slurm, Kubernetes: before SIGKILL) asks the workers to checkpoint; installed after ray.init,
    # whose own handler would end the driver mid-fit with no checkpoint.
    terminated = []

    def on_sigterm(*_):
        terminated.append(True)
        atomic_write_text(stop_file, "SIGTERM\n")

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        result = trainer.fit()
    except Exception as e:
        _raise_workers_user_error(e)
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
        stop_file.unlink(missing_ok=True)
    if result.error is not None:
        _raise_workers_user_error(result.error)
    if terminated:
        from mvforge.models.resolve import latest_checkpoint

        print(
            f"mvtrain fit: SIGTERM: checkpoint {latest_checkpoint(out)} written; exiting 143", file=sys.stderr
        )
        raise SystemExit(143)
    return result


def _raise_workers_user_error(error: BaseException) -> None:
    """Raise, as the one line it is, a UserError a worker raised (a damaged shard, a bad input), prefixed with its
    rank; Ray Train wraps the workers' exceptions in a WorkerGroupError (``worker_failures``: rank -> error),
    which the CLI would print as a traceback. Returns when no worker raised one."""
    failures = getattr(error, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        if isinstance(failure, UserError):
            raise UserError(f"rank {rank}: {failure}") from None


def check_cluster_size(workers: int, use_gpu: bool, local: bool) -> None:
    """Ray Train waits, without a word, until the cluster can place every worker (one CPU each, or one GPU with
    ``use_gpu``). A local Ray this command started never grows: refuse. Any other (a cluster, or a Ray the
    caller started) may: say that it waits, and why."""
    import ray

    kind = "GPU" if use_gpu else "CPU"
    have = int(ray.cluster_resources().get(kind, 0))
    if have >= workers:
        return
    if have:
        fix = f"pass --workers {have}"
    else:
        fix = "pass --gpus-per-worker 0 to train on CPUs" if use_gpu else "start Ray with CPUs"
    need = f"--workers {workers} needs {workers} {kind}{'s' if workers > 1 else ''} (one per worker)"
    if local:
        raise UserError(f"{need} and this machine's Ray has {have}; {fix}, or --address of a larger cluster")
    print(
        f"mvtrain fit: {need} and the Ray cluster has {have} now; Ray Train waits until it has them (an "
        f"autoscaler may add nodes). Ctrl-C stops; or {fix}",
        file=sys.stderr,
        flush=True,
    )


def _abs(source: str) -> str:
    return source if "://" in source else str(Path(source).resolve())
