"""Benchmark: one multi-view training step against a plain UNet step on the same images (design §8: <= 1.10x).

Both sides run forward + backward + AdamW step of the UNet on the same latents, timesteps and text states
(the frozen VAE and text encoder cost the same on both sides and are left out). The multi-view side is the
MultiViewUNet with the camera MLP and 3D self-attention over V views; the plain side is the identical
diffusers UNet2DConditionModel (same weights, no camera, per-view self-attention). A third row isolates the
camera MLP (multi-view UNet with num_views=1). Steps are interleaved A/B/C so load from other processes hits
all sides alike; the median per side is reported.

    .venv/bin/python bench/bench_train.py [--steps 10] [--latent 16 32] [--channels 128 256]
    .venv/bin/python bench/bench_train.py --arch sd21 --device cuda --bf16 --objects 4 --latent 32   # on a GPU
    .venv/bin/python bench/bench_train.py --arch sd21 --device cuda --bf16 --objects 8 --latent 32 --mfu \
        --peak-tflops 989 [--checkpointing]       # MFU and peak memory (docs/bench/train.md)

``--mfu``: FLOPs of one multi-view step counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward +
backward), divided by the median step time and by ``--peak-tflops`` (the GPU's dense bf16 peak: 989 for H100 /
H200 SXM). ``--checkpointing``: gradient checkpointing on the multi-view UNet; on CUDA the peak memory of each
side is printed (run with and without to compare).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel
from sd_arch import SD21, unet_kwargs

from mvforge.models.model import multiview_from_sd

# SD 2.1 base's UNet architecture (random weights: the timing does not depend on them), for GPU machines.
SD21_UNET = unet_kwargs(SD21, sample_size=64)


def build(arch: str, channels: list[int]) -> tuple[UNet2DConditionModel, torch.nn.Module]:
    torch.manual_seed(0)
    if arch == "sd21":
        plain = UNet2DConditionModel(**SD21_UNET)
    else:
        plain = UNet2DConditionModel(
            sample_size=32,
            block_out_channels=tuple(channels),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
            cross_attention_dim=64,
            attention_head_dim=8,
        )
    mv = multiview_from_sd(plain)  # what loading SD 2.1 base does: camera MLP added, multi-view attention set
    return plain.train(), mv.train()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--objects", type=int, default=1)
    ap.add_argument("--latent", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--channels", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--arch", choices=["tiny", "sd21"], default="tiny", help="sd21: SD 2.1 base's UNet shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--mfu", action="store_true", help="count FLOPs of a multi-view step and print MFU")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (MFU)")
    ap.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing on the multi-view UNet"
    )
    args = ap.parse_args()
    dev = torch.device(args.device)

    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}")
    plain, mv = build(args.arch, args.channels)
    plain, mv = plain.to(dev), mv.to(dev)
    if args.checkpointing:
        mv.enable_gradient_checkpointing()
    ctx = 64 if args.arch == "tiny" else SD21_UNET["cross_attention_dim"]
    n = args.objects * args.views
    params = sum(p.numel() for p in plain.parameters()) / 1e6
    print(
        f"UNet {args.arch} {args.channels if args.arch == 'tiny' else SD21_UNET['block_out_channels']} "
        f"({params:.1f} M params), {args.objects} object(s) x {args.views} views"
    )
    for size in args.latent:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 4, size, size, generator=g).to(dev)
        t = torch.randint(0, 1000, (args.objects,), generator=g).repeat_interleave(args.views).to(dev)
        text = torch.randn(n, 77, ctx, generator=g).to(dev)
        cams = torch.randn(n, 16, generator=g).to(dev)
        target = torch.randn_like(x)
        opts = {
            "plain": torch.optim.AdamW(plain.parameters(), lr=1e-5),
            "multiview": torch.optim.AdamW(mv.parameters(), lr=1e-5),
        }
        # (name, model, optimizer, cameras, num_views); the plain UNet takes no camera and no num_views.
        sides = [
            ("plain", plain, opts["plain"], None, None),
            ("multiview", mv, opts["multiview"], cams, args.views),
            ("camera only (V=1)", mv, opts["multiview"], cams, 1),
        ]
        times: dict[str, list[float]] = {name: [] for name, *_ in sides}
        peak_mem: dict[str, float] = {}
        flops = None
        if args.mfu:
            from torch.utils.flop_counter import FlopCounterMode

            with FlopCounterMode(display=False) as counter:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                    out = mv(x, t, text, cameras=cams, num_views=args.views)
                torch.nn.functional.mse_loss(out.float(), target).backward()
            mv.zero_grad(set_to_none=True)
            flops = counter.get_total_flops()
        for i in range(args.steps + 2):  # 2 warm-up rounds
            for name, model, opt, c, v in sides:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                sync(dev)
                t0 = time.perf_counter()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                    out = model(x, t, text).sample if v is None else model(x, t, text, cameras=c, num_views=v)
                loss = torch.nn.functional.mse_loss(out.float(), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync(dev)
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
                if dev.type == "cuda":
                    peak_mem[name] = max(
                        peak_mem.get(name, 0.0), torch.cuda.max_memory_allocated(dev) / 2**30
                    )
        base = statistics.median(times["plain"])
        print(f"\nlatent {size}x{size} ({size * 8} px images in SD), {args.steps} steps, median s/step:")
        for name, ts in times.items():
            med = statistics.median(ts)
            mem = f"   peak {peak_mem[name]:6.2f} GiB" if name in peak_mem else ""
            print(f"  {name:18s} {med:8.3f} s   ratio {med / base:5.2f}x   {n / med:8.1f} images/s{mem}")
        if flops is not None:
            med = statistics.median(times["multiview"])
            achieved = flops / med / 1e12
            print(
                f"  multiview step: {flops / 1e12:.2f} TFLOP, {achieved:.1f} TFLOP/s, "
                f"MFU {achieved / args.peak_tflops:.1%} of {args.peak_tflops:g} TFLOP/s"
            )


if __name__ == "__main__":
    main()
