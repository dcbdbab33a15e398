"""The training step on injected inputs (t, noise, latents fixed), tiny SD model on CPU (docs/train.md):
gradient accumulation equals one large batch with one all-reduce per optimizer step, and a tiny model's loss
on one multi-view batch falls >= 10x."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from mvforge.train.config import FitConfig, OptimConfig
from mvforge.train.loop import Runtime, load_models, make_optimizer, micro_batch_loss, optimizer_step


def test_accumulated_gradients_equal_one_large_batch_with_one_allreduce(tiny_sd, tmp_path, step_inputs):
    """(And 2D steps keep the DDP graph static.) k = 3 micro-batches of 1 object (DDP, no_sync on the first two) vs one batch of 3 objects: the same
    per-parameter gradients (atol 1e-6 + rtol 1e-4: float32 sums in another order), and the k micro-batches
    launch exactly the all-reduces of one backward pass (one per gradient bucket)."""
    k = 3
    cfg = FitConfig(pretrained=str(tiny_sd), shards="unused", device="cpu", grad_accum_steps=k)
    injected_inputs, cat_inputs = step_inputs
    micro = [injected_inputs(1, seed=i) for i in range(k)]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        calls = []

        def counting_hook(state, bucket):
            calls.append(bucket.index())
            return allreduce_hook(None, bucket)

        def ddp(model):
            wrapped = torch.nn.parallel.DistributedDataParallel(model)
            wrapped.register_comm_hook(None, counting_hook)
            return wrapped

        m = load_models(cfg, Runtime(world_size=1, wrap_model=ddp), None)
        # DDP rebuilds its gradient buckets after the first backward: count from the second on.
        micro_batch_loss(m, micro[0], cfg).backward()
        m.unet.zero_grad(set_to_none=True)
        calls.clear()
        for j, inputs in enumerate(micro):
            with m.model.no_sync() if j < k - 1 else torch.enable_grad():
                (micro_batch_loss(m, inputs, cfg) / k).backward()
        accumulated = {n: p.grad.clone() for n, p in m.unet.named_parameters()}
        calls_accum = len(calls)
        m.unet.zero_grad(set_to_none=True)
        calls.clear()
        micro_batch_loss(m, cat_inputs(micro), cfg).backward()
        calls_one = len(calls)
        large = {n: p.grad.clone() for n, p in m.unet.named_parameters()}
        # 2D steps (no camera) keep DDP's graph static without find_unused_parameters: two in a row would
        # raise "Expected to have finished reduction" if the camera MLP got no gradient.
        m.unet.zero_grad(set_to_none=True)
        for seed in (7, 8):
            micro_batch_loss(m, injected_inputs(2, views=1, seed=seed, cameras=False), cfg).backward()
        assert m.unet.class_embedding.linear_1.weight.grad is not None
    finally:
        dist.destroy_process_group()
    assert calls_accum == calls_one > 0
    # Every weight gets a gradient (the camera MLP's first layer none: its last layer starts at zero).
    assert all(g.abs().sum() > 0 for n, g in large.items() if not n.startswith("class_embedding"))
    for name, g in large.items():
        torch.testing.assert_close(accumulated[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_loss_on_one_multiview_batch_falls_tenfold(tiny_sd, step_inputs):
    """Fixed t and noise per sample: the tiny UNet overfits one 2-object x 4-view batch within a CPU minute."""
    cfg = FitConfig(
        pretrained=str(tiny_sd),
        shards="unused",
        device="cpu",
        max_steps=200,
        optim=OptimConfig(lr=2e-3, lr_scheduler="constant", weight_decay=0.0),
    )
    m = load_models(cfg, Runtime(), None)
    optimizer, lr_sched = make_optimizer(m.unet, cfg, m.device)
    inputs = step_inputs[0](2, seed=5)
    start, losses = time.monotonic(), []
    while time.monotonic() - start < 60 and len(losses) < cfg.max_steps:
        loss = micro_batch_loss(m, inputs, cfg)
        loss.backward()
        losses.append(loss.item())
        optimizer_step(m, optimizer, lr_sched, None, cfg)
        if losses[-1] < losses[0] / 10:
            break
    assert losses[-1] < losses[0] / 10, (len(losses), losses[0], losses[-1])
