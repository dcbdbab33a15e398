#!/usr/bin/env bash
# The paper's §5.1 ablations at toy scale (docs/benchmarks.md "Ablations"): the demo world's UNet trained again
# without the camera embedding, or with per-image self-attention only (or, beyond the paper's ablations, without
# its 2D batches: every step a 3D one), then scored exactly as `make demo` scores
# the full model: the known-answer eval of the 11 trained captions, and SDS of the cone, the chair and the kettle
# rendered back and compared with the ground truth. Every variant is scored at the checkpoint of step STEPS (the
# full model's is the demo's own, WORLD/train), so all are compared after the same training.
#   bash bench/ablation_world.sh WORLD VARIANT     WORLD: a finished `make demo` output (its renders, shards,
#                                                  fitted VAE and model are reused); VARIANT: full, no-camera,
#                                                  per-image, 3d-only
# Writes WORLD/ablation/VARIANT/{train,eval,eval-novel,sds,sds-renders,eval-sds}; resumable like the demo (each step keeps
# what is done). Print the table of all variants with bench/ablation_table.py WORLD.
set -euo pipefail
WORLD=${1:?usage: bash bench/ablation_world.sh WORLD full|no-camera|per-image|3d-only}
VARIANT=${2:?usage: bash bench/ablation_world.sh WORLD full|no-camera|per-image|3d-only}
STEPS=${STEPS:-2400}
BIN=.venv/bin
SDS_UIDS=(demo-traffic-cone demo-chair demo-kettle)
export RAY_USAGE_STATS_ENABLED=0
case $VARIANT in
  full) KNOB="" ;;
  no-camera) KNOB=camera_embedding=false ;;
  per-image) KNOB=multiview_attention=false ;;
  3d-only) KNOB=loader.p_3d=1.0 ;;  # the 2D image-text steps (paper §3.3: 30%) left out
  *) echo "error: VARIANT is full, no-camera, per-image or 3d-only, not $VARIANT" >&2; exit 2 ;;
esac
for f in train/config.toml trained-captions.tsv models/world-sd shards-2d/2d-000000.tar blob-renders; do
  [ -e "$WORLD/$f" ] || { echo "error: $WORLD/$f is missing; run \`make demo DEMO=$WORLD\` first" >&2; exit 2; }
done
OUT=$WORLD/ablation/$VARIANT
# The world's own seed (demo.sh's SEED, recorded in its fit's config): a variant differs from the full model in its
# knob alone, not in its batches or its noise.
SEED=$($BIN/python -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["seed"])' "$WORLD/train/config.toml")
mkdir -p "$OUT"
t() { local s=$SECONDS; "$@"; echo "  -> $((SECONDS - s)) s: ${*:1:3}"; }
caption() { grep -P "^$1\t" "$WORLD/trained-captions.tsv" | cut -f2; }

TRAIN=$WORLD/train
if [ -n "$KNOB" ]; then
  echo "== $VARIANT: fit ($KNOB), the demo's recipe otherwise"
  TRAIN=$OUT/train
  t $BIN/mvtrain fit --config configs/world-fit.toml --model "$WORLD/models/world-sd" --shards "$WORLD/shards" \
    --shards-2d "$WORLD/shards-2d/2d-000000.tar" --out "$TRAIN" --max-steps "$STEPS" --set "$KNOB" \
    --set seed="$SEED"
fi
MODEL=$TRAIN/checkpoints/step-$(printf %06d "$STEPS")
[ -d "$MODEL" ] || { echo "error: $MODEL is missing (STEPS=$STEPS: a multiple of the fit's checkpoint_every)" >&2; exit 2; }
echo "== $VARIANT: known-answer eval of the trained captions"
t $BIN/mvtrain eval --known-answer --model "$MODEL" --reference "$WORLD/renders" \
  --prompts "$WORLD/trained-captions.tsv" --out "$OUT/eval" --device cpu
echo "== $VARIANT: novel prompts (bench/novel-prompts.tsv: the world's objects in colours never trained); no truth"
echo "   exists for them, so what counts is whether an object's 4 views are nearest one object (views_agree)"
t $BIN/mvtrain eval --known-answer --model "$MODEL" --reference "$WORLD/renders" \
  --prompts bench/novel-prompts.tsv --out "$OUT/eval-novel" --device cpu --set "shifts_deg=[]"
echo "== $VARIANT: SDS of ${SDS_UIDS[*]}, rendered back and scored"
: > "$OUT/sds-meshes.jsonl.tmp"
for uid in "${SDS_UIDS[@]}"; do
  t $BIN/mvtrain sds --config configs/sds-world-cpu.toml --model "$MODEL" --prompt "$(caption "$uid")" \
    --out "$OUT/sds/$uid"
  $BIN/python - "$OUT" "$uid" "$(caption "$uid")" >> "$OUT/sds-meshes.jsonl.tmp" <<'PY'
import json, pathlib, sys
out, uid, caption = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
run = out / "sds" / uid  # the caption's run is its --out
print(json.dumps({"uid": uid, "path": str((run / "mesh.glb").resolve()), "caption": caption}))
PY
done
mv "$OUT/sds-meshes.jsonl.tmp" "$OUT/sds-meshes.jsonl"
mapfile -t MESHES < <($BIN/python -c "import json,sys; [print(json.loads(l)['path']) for l in open(sys.argv[1])]" \
  "$OUT/sds-meshes.jsonl")
t $BIN/mvdata render "${MESHES[@]}" --captions "$OUT/sds-meshes.jsonl" --out "$OUT/sds-renders" --views 16 \
  --orbits 2 --resolution 32 --samples 8 --shared-cameras --workers 2 --threads 1 --set cameras.framing=mvdream
t $BIN/mvtrain eval --known-answer --generated "$OUT/sds-renders" --baseline "$WORLD/blob-renders" \
  --reference "$WORLD/renders" --out "$OUT/eval-sds"
echo "== $VARIANT: done; the table: .venv/bin/python bench/ablation_table.py $WORLD"
