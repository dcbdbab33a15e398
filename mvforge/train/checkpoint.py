"""Checkpoint I/O of `mvtrain fit` (docs/design.md §2.5), apart from the loop so DreamBooth reuses it.

Layout (diffusers format): ``checkpoints/step-000100/`` with ``unet/``, ``unet_ema/`` (diffusers' ``EMAModel``
saved as a UNet, its decay state in the config), ``optimizer.pt``, ``lr_scheduler.pt``, ``scaler.pt`` (fp16),
``loader-rank<r>.json`` (one per rank), ``config.toml``, ``state.json`` (step, world size) and ``COMMITTED``.
A checkpoint is filled as ``step-000100.tmp`` and renamed into place; ``COMMITTED`` is written last, so a
copy on an object store (which has no rename; Ray Train uploads the directory) is complete when it has the
marker. Only the newest ``keep_checkpoints`` are kept.

Resume with a different number of workers: the weights, optimizer, schedule and step are global; the loader
positions are per rank. With the same world size each rank restores its exact position; with another one the
loader starts the epoch after the saved one on fresh shard visits (no sample order to keep: the shards are
split anew between ranks), and the 3D/2D branch of each step is unchanged (a function of the step).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import torch

from mvforge import config as config_mod
from mvforge import rundir
from mvforge.formats import runs
from mvforge.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, versions


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint(out: Path, step: int, rt, state: dict, loader_state: dict, cfg) -> Path:
    """Write checkpoint ``step`` of run ``out``; every rank calls it (barriers inside). ``state``: ``unet``,
    ``ema`` (EMAModel or None), ``optimizer``, ``lr_sched``, ``scaler`` (GradScaler or None). Each rank writes
    ``loader_state`` (its data position, JSON-able: the loader's ``state_dict()``; DreamBooth's photo set) into
    the shared ``.tmp`` directory; rank 0 writes the rest, renames it into place, writes
    the marker and prunes old checkpoints. Returns the checkpoint directory."""
    run = rundir.RunDir(out)
    final = run.checkpoint_path(step)
    tmp = final.with_name(final.name + ".tmp")
    if rt.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a SIGTERM checkpoint may repeat a step's checkpoint
        tmp.mkdir(parents=True)
    rt.barrier()
    atomic_write_json(tmp / runs.loader_state_name(rt.rank), loader_state)
    if rt.rank == 0:
        state["unet"].save_pretrained(tmp / runs.UNET)
        if state["ema"] is not None:
            state["ema"].save_pretrained(tmp / runs.UNET_EMA)
        atomic_write_bytes(tmp / runs.OPTIMIZER, _torch_bytes(state["optimizer"].state_dict()))
        atomic_write_bytes(tmp / runs.LR_SCHEDULER, _torch_bytes(state["lr_sched"].state_dict()))
        if state.get("scaler") is not None:
            atomic_write_bytes(tmp / runs.SCALER, _torch_bytes(state["scaler"].state_dict()))
        atomic_write_text(tmp / runs.CONFIG, config_mod.to_toml(cfg))
        meta = {"step": step, "world_size": rt.world_size, "versions": versions("torch", "diffusers")}
        atomic_write_json(tmp / runs.STATE, meta)
    rt.barrier()
    if rt.rank == 0:
        os.replace(tmp, final)
        atomic_write_text(final / runs.COMMITTED, f"{step}\n")
        run.prune_checkpoints(cfg.keep_checkpoints)
    rt.barrier()
    return final


def check_checkpoint(ckpt: Path) -> None:
    """Raise ``rundir.Damaged`` unless ``ckpt`` can be resumed from: ``state.json`` parses, every safetensors
    header fits its file and every ``.pt`` loads with ``weights_only`` (a pickled optimizer state is refused,
    never run). Header and zip-directory reads only: cheap next to loading the weights."""
    try:
        int(json.loads((ckpt / runs.STATE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise rundir.Damaged(f"{ckpt / runs.STATE}: {type(e).__name__}") from None
    for f in sorted(ckpt.rglob("*.safetensors")):
        rundir.check_safetensors(f)
    for f in sorted(ckpt.glob("*.pt")):
        rundir.check_torch_file(f)


def load_training_state(ckpt: Path, device: torch.device, optimizer, lr_sched, scaler) -> int:
    """Restore optimizer, LR schedule and gradient scaler from ``ckpt`` in place; returns its step. The optimizer
    keeps the kernels it was made with (``foreach``/``fused``: how this process runs, e.g. a CUDA run's fused
    kernel resumed on a CPU), which torch's ``load_state_dict`` would take from the checkpoint."""
    kernels = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(torch.load(ckpt / runs.OPTIMIZER, map_location=device, weights_only=True))
    for group, kept in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kept)
    lr_sched.load_state_dict(torch.load(ckpt / runs.LR_SCHEDULER, weights_only=True))
    if scaler is not None and (ckpt / runs.SCALER).is_file():
        scaler.load_state_dict(torch.load(ckpt / runs.SCALER, weights_only=True))
    return int(json.loads((ckpt / runs.STATE).read_text())["step"])


def loader_state(ckpt: Path, rank: int, world_size: int) -> dict:
    """The loader state rank ``rank`` of ``world_size`` resumes from (see the module docstring): its own
    file when the world size is the saved one, else rank 0's moved to the next epoch on fresh shard visits."""
    own = ckpt / runs.loader_state_name(rank)
    saved_world = json.loads((ckpt / runs.STATE).read_text())["world_size"]
    if saved_world == world_size and own.is_file():
        return json.loads(own.read_text())
    state = json.loads((ckpt / runs.loader_state_name(0)).read_text())
    streams = {}
    for kind, s in state["streams"].items():
        # Visits past any saved one: every rank's shard draws are new (they are seeded by rank and visit).
        visit = 1 + max((int(v) for v, _ in s["positions"]), default=0)
        streams[kind] = {"consumed": 0, "positions": [[visit, 0] for _ in s["positions"]]}
    return state | {
        "rank": rank,
        "world_size": world_size,
        "epoch": state["epoch"] + (1 if state["batch_in_epoch"] else 0),
        "batch_in_epoch": 0,
        "streams": streams,
    }
