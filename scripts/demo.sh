#!/usr/bin/env bash
# `make demo`: the whole data pipeline on the embedded demo objects, small enough for 2 CPU cores.
# render (Blender Cycles, Ray) -> filter (tiny random-init CLIP, keep-fraction) -> shard -> verify -> report.
set -euo pipefail
OUT=${1:-demo-out}
BIN=.venv/bin
export RAY_USAGE_STATS_ENABLED=0

echo "== render: 12 demo objects x 8 views, 128 px, 16 samples"
$BIN/mvdata render demo --out "$OUT/renders" --views 8 --resolution 128 --samples 16 --workers 2

echo "== filter: CLIP score with a tiny random-init model (no download), keep 75%"
$BIN/mvdata make-tiny-clip --out "$OUT/models/tiny-clip"
$BIN/mvdata filter "$OUT/renders" --out "$OUT/filter" \
  --pretrained "local-dir:$OUT/models/tiny-clip" --keep-fraction 0.75 --workers 1

echo "== shard + verify"
$BIN/mvdata shard --renders "$OUT/renders" --selection "$OUT/filter/selection.parquet" --out "$OUT/shards" \
  --max-count 4 --val-fraction 0.2
$BIN/mvdata verify "$OUT/shards"

echo "== report"
$BIN/mvdata report "$OUT"
