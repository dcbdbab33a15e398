#!/usr/bin/env bash
# The demo world on one GPU, for the day a device is lent (docs/demo.md, docs/benchmarks.md): <= 10 minutes.
#   1. the world at 256 px (the paper's resolution): render, shard, fit-vae, fit, known-answer eval, with times;
#   2. one SDS step's time at the official settings (configs/sds-mvdream.toml, SD 2.1-size random weights);
#   3. the fit's MFU on an SD 2.1-size multi-view UNet (bf16, 8 objects x 4 views at 32² latents).
# Each part prints its own figures; the whole log goes to $OUT/gpu_world.log. Nothing is downloaded.
#   bash bench/gpu_world.sh [OUT]          (STEPS=600 by default: the world's fit steps at 256 px)
set -euo pipefail
OUT=${1:-gpu-world}
STEPS=${STEPS:-600}
BIN=.venv/bin
export RAY_USAGE_STATS_ENABLED=0
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_world.log") 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
t() { local s=$SECONDS; "$@"; echo "  -> $((SECONDS - s)) s: $*" | cut -c1-160; }

echo "== 1. the world at 256 px"
t $BIN/mvdata render demo --out "$OUT/renders" --views 16 --orbits 3 --resolution 256 --samples 16 \
  --shared-cameras --workers 4 --gpus-per-worker 0.25 --set cameras.framing=mvdream
t $BIN/mvdata shard "$OUT/renders" --out "$OUT/shards" --val-fraction 0 --val-views "$(seq -s, 32 47)" --max-count 4 \
  --workers 0 --views-2d "$OUT/shards-2d"
[ -d "$OUT/world-init" ] || t $BIN/mvtrain make-tiny-sd --out "$OUT/world-init" --variant world \
  --prediction-type v_prediction --attention-heads 1
t $BIN/mvtrain fit-vae --model "$OUT/world-init" --shards "$OUT/shards" --out "$OUT/world-sd" --max-steps 600 \
  --device cuda
t $BIN/mvtrain fit --config configs/world-fit.toml --model "$OUT/world-sd" --shards "$OUT/shards" \
  --shards-2d "$OUT/shards-2d/2d-000000.tar" --out "$OUT/train" --max-steps "$STEPS" --device cuda \
  --set loader.resolution=256
t $BIN/mvtrain eval --known-answer --model "$OUT/train" --reference "$OUT/renders" --out "$OUT/eval" --device cuda \
  --set orbit=2

echo "== 2. one SDS step at the official settings (SD 2.1-size random weights, 64² and 256² phases)"
t $BIN/python bench/bench_sds.py --device cuda --sd21-random --samples 256 --iters 3 --warmup 1

echo "== 3. fit MFU: SD 2.1-size multi-view UNet, bf16, 8 objects x 4 views, 32² latents (989 TFLOPs dense bf16)"
t $BIN/python bench/bench_train.py --arch sd21 --device cuda --bf16 --objects 8 --latent 32 --mfu --peak-tflops 989
