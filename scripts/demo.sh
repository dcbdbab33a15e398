#!/usr/bin/env bash
# `make demo`: the whole data pipeline on the embedded demo objects, small enough for 2 CPU cores.
# render (Blender Cycles, Ray) -> filter (tiny random-init CLIP, keep-fraction) -> shard -> verify
# -> fit (tiny random-init multi-view SD, a few steps) -> sample (4 views, diffusers pipeline)
# -> sds (text to 3D: mesh + turntable) -> eval -> dreambooth (a few MVDreamBooth steps on two demo
# renders) -> report.
# Every step resumes: running it again after an interruption redoes only what is missing.
set -euo pipefail
OUT=${1:-demo-out}
BIN=.venv/bin
export RAY_USAGE_STATS_ENABLED=0

echo "== render: 12 demo objects x 8 views, 128 px, 16 samples"
$BIN/mvdata render demo --out "$OUT/renders" --views 8 --resolution 128 --samples 16 --workers 2

echo "== filter: CLIP score with a tiny random-init model (no download), keep 75%"
$BIN/mvdata make-tiny-clip --out "$OUT/models/tiny-clip"
$BIN/mvdata filter "$OUT/renders" --out "$OUT/filter" \
  --clip-pretrained "local-dir:$OUT/models/tiny-clip" --keep-fraction 0.75 --workers 1

echo "== shard + verify"
$BIN/mvdata shard "$OUT/renders" --selection "$OUT/filter/selection.parquet" --out "$OUT/shards" \
  --max-count 4 --val-fraction 0.2
$BIN/mvdata verify "$OUT/shards"

echo "== fit: multi-view UNet (3D self-attention + camera embedding) on the shards, tiny random-init SD"
$BIN/mvtrain make-tiny-sd --out "$OUT/models/tiny-sd"
$BIN/mvtrain fit --model "$OUT/models/tiny-sd" --shards "$OUT/shards" --out "$OUT/train" --workers 0 \
  --max-steps 4 --set loader.batch_size=2 --set loader.resolution=64 --set checkpoint_every=2 --set log_every=1 \
  --validate-every 2 --set validation.steps=4 --set "validation.prompts=['a red ceramic coffee mug']"

echo "== sample: 4 views from text through the multi-view diffusers pipeline (the authors' DDIM + CFG 10, 10 steps)"
PIPE="$OUT/models/mv-pipeline"  # the trained model as a diffusers pipeline directory, written once
SAVE=()
[ -f "$PIPE/model_index.json" ] || SAVE=(--save-pipeline "$PIPE")
$BIN/mvtrain sample --model "$OUT/train" --prompt "a red ceramic coffee mug" --out "$OUT/samples" --steps 10 \
  --resolution 64 --device cpu "${SAVE[@]}"

echo "== sds: text to 3D with the fitted tiny model as the prior (configs/sds-demo-cpu.toml: 200 steps at 32 px)"
$BIN/mvtrain sds --config configs/sds-demo-cpu.toml --model "$OUT/train" --prompt "a red ceramic coffee mug" \
  --out "$OUT/sds"

echo "== eval: FID/KID/IS/CLIP score + consistency of the sampled model against the held-out shards (tiny"
echo "   random extractors: the numbers exercise the code, they measure nothing; resumable)"
$BIN/mvtrain eval --model "$PIPE" --reference "$OUT/shards" --out "$OUT/eval" --features tiny \
  --clip-pretrained "local-dir:$OUT/models/tiny-clip" --steps 4 --resolution 64 --image-size 64 --max-prompts 4 \
  --device cpu

echo "== dreambooth: MVDreamBooth on two renders of one demo object (4 steps, 2D mode, preservation loss)"
PHOTOS="$OUT/dreambooth-photos"
OBJ=$(dirname "$(find "$OUT/renders" -name meta.json | sort | head -1)")
mkdir -p "$PHOTOS"
cp "$OBJ/000.png" "$PHOTOS/view-000.png"
cp "$OBJ/002.png" "$PHOTOS/view-002.png"
$BIN/mvtrain dreambooth --model "$PIPE" --images "$PHOTOS" --prompt "a photo of xjq object" --out "$OUT/dreambooth" \
  --max-steps 4 --device cpu --class-prompt "a photo of an object" --validate-every 4 \
  --set resolution=64 --set batch_size=2 --set checkpoint_every=2 --set log_every=1 --set validation.steps=2
$BIN/mvtrain sample --model "$OUT/dreambooth" --prompt "a photo of xjq object" --out "$OUT/dreambooth-samples" \
  --steps 4 --resolution 64 --device cpu

echo "== report"
$BIN/mvdata report "$OUT"
