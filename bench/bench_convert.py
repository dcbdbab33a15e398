"""Benchmark: `mvtrain convert` time and peak RSS on a random checkpoint in the official SD 2.1 MVDream layout
(docs/sample.md). Full size by default (~1.3 G parameters, ~5 GB fp32, as ``sd-v2.1-base-4view.pt``); smaller widths
with ``--model-channels`` / ``--text-width`` / ``--vae-ch`` where memory is short.

The checkpoint is written by ``tests.fixtures.ldm_layout.random_sd21_checkpoint`` in this process; the
conversion runs in a fresh ``mvtrain convert`` process, so its peak RSS is the converter's alone.

    .venv/bin/python bench/bench_convert.py --work /tmp/bench-convert            # full size
    .venv/bin/python bench/bench_convert.py --work /tmp/bench-convert --model-channels 64 --text-width 256 --vae-ch 32
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures (the repository root; bench runs as python bench/x.py)

from tests.fixtures.ldm_layout import random_sd21_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--model-channels", type=int, default=320)
    ap.add_argument("--text-width", type=int, default=1024)
    ap.add_argument("--vae-ch", type=int, default=128)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument(
        "--reuse", action="store_true", help="Keep an existing checkpoint in --work (same sizes)."
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt, out = args.work / "random-sd21-4view.pt", args.work / "converted"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    params = None
    if not (args.reuse and ckpt.is_file()):
        sd = random_sd21_checkpoint(args.model_channels, args.text_width, vae_ch=args.vae_ch)
        params = sum(v.numel() for v in sd.values())
        torch.save(sd, ckpt)
        del sd
    gen_s = time.perf_counter() - t0
    # The official configuration is picked from the state dict unless the sizes differ from it.
    cmd = [
        str(Path(sys.executable).with_name("mvtrain")),
        "convert",
        str(ckpt),
        "--out",
        str(out),
        "--dtype",
        args.dtype,
    ]
    if (args.model_channels, args.text_width, args.vae_ch) != (320, 1024, 128):
        import yaml

        from mvforge.models.convert import OFFICIAL_CONFIGS

        cfg = json.loads(json.dumps(OFFICIAL_CONFIGS["sd-v2-base"]))
        p = cfg["model"]["params"]
        p["unet_config"]["params"].update(model_channels=args.model_channels, context_dim=args.text_width)
        p["first_stage_config"]["params"]["ddconfig"]["ch"] = args.vae_ch
        (args.work / "arch.yaml").write_text(yaml.safe_dump(cfg))
        cmd += ["--original-config", str(args.work / "arch.yaml")]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t1
    if proc.returncode:
        sys.exit(proc.stderr)
    rec = json.loads((out / "conversion.json").read_text())
    print(
        json.dumps(
            {
                "parameters": params,
                "checkpoint_gb": round(ckpt.stat().st_size / 1e9, 2),
                "generate_s": round(gen_s, 1),
                "convert_wall_s": round(wall, 1),
                "convert_s": rec["seconds"],
                "peak_rss_mb": rec["peak_rss_mb"],
                "rss_mb_at_end": rec["rss_mb_at_end"],
                "dtype": args.dtype,
            }
        )
    )


if __name__ == "__main__":
    main()
