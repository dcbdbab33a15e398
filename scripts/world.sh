#!/usr/bin/env bash
# `make world`: the demo world learned from scratch and scored against its own ground truth (docs/demo.md).
# render (shared cameras, 2 orbits x 16 views, 32 px) -> shard (+ every view as a 2D pair) -> fit-vae (a
# reconstructing autoencoder) -> fit (UNet from scratch, 70% 3D / 30% 2D steps) -> eval --known-answer.
# Every step resumes: a second run takes seconds. STEPS sets the UNet's optimizer steps (default 1200).
set -euo pipefail
OUT=${1:-world-out}
STEPS=${STEPS:-1200}
BIN=.venv/bin
export RAY_USAGE_STATS_ENABLED=0

echo "== render: the 12 demo objects, the same 2 x 16 cameras for every object, 32 px, paper framing"
$BIN/mvdata render demo --out "$OUT/renders" --views 16 --orbits 2 --resolution 32 --samples 8 \
  --shared-cameras --workers 2 --threads 1 --set cameras.framing=mvdream

echo "== shard: every object in train (validation is the known-answer eval on the same cameras)"
$BIN/mvdata shard "$OUT/renders" --out "$OUT/shards" --val-fraction 0 --max-count 4 --workers 0 \
  --views-2d "$OUT/shards-2d"

echo "== fit-vae: the world model's autoencoder fitted to the renders (a random VAE cannot reconstruct)"
$BIN/mvtrain make-tiny-sd --out "$OUT/models/world-init" --variant world --prediction-type v_prediction
$BIN/mvtrain fit-vae --model "$OUT/models/world-init" --shards "$OUT/shards" --out "$OUT/models/world-sd" \
  --max-steps 600

echo "== fit: the multi-view UNet from scratch, 3D and 2D batches mixed (paper §3.3: 30% 2D)"
$BIN/mvtrain fit --config configs/world-fit.toml --model "$OUT/models/world-sd" --shards "$OUT/shards" \
  --shards-2d "$OUT/shards-2d/2d-000000.tar" --out "$OUT/train" --max-steps "$STEPS"

echo "== eval --known-answer: each caption sampled at its object's cameras, scored against the renders"
$BIN/mvtrain eval --known-answer --model "$OUT/train" --reference "$OUT/renders" --out "$OUT/eval" --device cpu
