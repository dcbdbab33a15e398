"""Two Ray Train workers (gloo DDP on CPU), tiny SD model (docs/train.md): one DDP step equals
one single-process step on the concatenated batches; a 2-worker `fit` on real shards runs its steps; a worker
killed at step 3 (deterministic fault hook) is restarted and the run ends with the uninterrupted run's weights;
the run then resumes in-process with one worker."""

from __future__ import annotations

import json
import sys

import pytest
import ray.cloudpickle
import torch

from mvforge.models.model import MultiViewUNet
from mvforge.train.config import FitConfig, OptimConfig
from mvforge.train.loop import FAULT_ENV, Runtime, fit, latest_checkpoint
from mvforge.train.ray_fit import fit_with_ray

# The Ray workers cannot import test modules: ship this one by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Adam's first step is lr * g / (|g| + eps): a large eps keeps float noise in near-zero gradients from being
# amplified to lr-sized differences, so the comparison below is of the gradient all-reduce, not of rounding.
OPTIM = OptimConfig(lr=1e-3, eps=1e-3, lr_scheduler="constant")


def _ddp_step(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    from mvforge.train.loop import load_models, make_optimizer, micro_batch_loss, optimizer_step

    cfg = FitConfig(**loop_config["cfg"], optim=OPTIM)
    rank = ray.train.get_context().get_world_rank()
    rt = Runtime(rank=rank, world_size=2, wrap_model=ray.train.torch.prepare_model)
    m = load_models(cfg, rt, None)
    optimizer, lr_sched = make_optimizer(m.unet, cfg, m.device)
    micro_batch_loss(m, loop_config["inputs"][rank], cfg).backward()
    optimizer_step(m, optimizer, lr_sched, None, cfg)
    if rank == 0:
        torch.save(m.unet.state_dict(), loop_config["out"])


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from mvforge.raytools import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ddp_step_over_two_workers_equals_one_step_on_the_concatenation(
    ray_local, tiny_sd, tmp_path, step_inputs
):
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from mvforge.train.loop import load_models, make_optimizer, micro_batch_loss, optimizer_step

    injected_inputs, cat_inputs = step_inputs
    inputs = [injected_inputs(1, seed=r) for r in range(2)]
    base = {"pretrained": str(tiny_sd), "shards": "unused", "device": "cpu"}
    TorchTrainer(
        _ddp_step,
        train_loop_config={"cfg": base, "inputs": inputs, "out": str(tmp_path / "ddp.pt")},
        scaling_config=ScalingConfig(num_workers=2),
    ).fit()
    cfg = FitConfig(**base, optim=OPTIM)
    m = load_models(cfg, Runtime(), None)
    optimizer, lr_sched = make_optimizer(m.unet, cfg, m.device)
    micro_batch_loss(m, cat_inputs(inputs), cfg).backward()
    optimizer_step(m, optimizer, lr_sched, None, cfg)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    moved = 0
    for name, p in m.unet.state_dict().items():
        # DDP averages the two ranks' mean losses = the mean over the concatenation (equal halves).
        torch.testing.assert_close(ddp[name], p, atol=1e-7, rtol=1e-6, msg=name)
        moved += (
            int(not torch.equal(p, load_models(cfg, Runtime(), None).unet.state_dict()[name]))
            if not moved
            else 0
        )
    assert moved


@pytest.mark.slow
def test_two_worker_fit_survives_a_killed_worker_with_the_same_weights(
    ray_local, make_fit_config, tiny_sd, shards_3d, tmp_path, monkeypatch
):
    full = make_fit_config(tiny_sd, shards_3d, tmp_path / "full", max_steps=4, checkpoint_every=2)
    assert fit_with_ray(full, workers=2).error is None
    assert latest_checkpoint(tmp_path / "full").name == "step-000004"

    # Rank 1 dies hard after step 3 (after the step-2 checkpoint); Ray Train restarts the group, which resumes.
    monkeypatch.setenv(FAULT_ENV, "kill:1:3")
    cut = make_fit_config(tiny_sd, shards_3d, tmp_path / "cut", max_steps=4, checkpoint_every=2)
    assert fit_with_ray(cut, workers=2, max_failures=1).error is None
    starts = [json.loads(x) for x in (tmp_path / "cut" / "worker_starts.jsonl").read_text().splitlines()]
    assert [s["resume"].rsplit("/", 1)[-1] for s in starts] == ["", "step-000002"]  # one restart
    a = MultiViewUNet.from_pretrained(latest_checkpoint(tmp_path / "full"), subfolder="unet").state_dict()
    b = MultiViewUNet.from_pretrained(latest_checkpoint(tmp_path / "cut"), subfolder="unet").state_dict()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0, msg=name)

    # Resume with another worker count: in-process (1 rank) from the 2-worker checkpoint, one more step.
    monkeypatch.delenv(FAULT_ENV)
    more = fit(make_fit_config(tiny_sd, shards_3d, tmp_path / "full", max_steps=5, checkpoint_every=5))
    assert [r["step"] for r in more] == [5]


@pytest.mark.slow
def test_a_damaged_shard_on_one_rank_ends_the_run_with_that_ranks_one_line(
    ray_local, make_fit_config, tiny_sd, shards_3d, tmp_path
):
    """Ray Train wraps a worker's exception in a WorkerGroupError; the driver raises the worker's UserError."""
    import shutil

    from mvforge.errors import UserError
    from tests.shards.test_checksum import _flip_a_camera_byte

    copy = tmp_path / "shards"
    shutil.copytree(shards_3d, copy)
    rank1 = sorted(copy.glob("train-*.tar"))[1]  # ranks take shards[rank::world]
    _flip_a_camera_byte(rank1)
    cfg = make_fit_config(tiny_sd, copy, tmp_path / "run", max_steps=4, checkpoint_every=4)
    with pytest.raises(UserError, match=rf"^rank 1: shard {rank1} does not match the sha256"):
        fit_with_ray(cfg, workers=2)
