#!/usr/bin/env bash
# `make demo`: the demo world (docs/demo.md). The 12 embedded demo objects are rendered, filtered and sharded as a
# user would, an autoencoder and a multi-view UNet are trained on them from scratch, and every generated result
# (sampled views, SDS meshes rendered back, a DreamBooth subject) is scored against the ground truth it should
# reproduce with `mvtrain eval --known-answer`. Then report.html shows the truth beside each result.
# Every step resumes: running it again after an interruption redoes only what is missing.
set -euo pipefail
OUT=${1:-demo-out}
BIN=.venv/bin
STEPS=${STEPS:-2400}                 # UNet optimizer steps (the learning curve: docs/demo.md)
SEED=${SEED:-0}                      # the models' random init and the VAE and UNet fits (docs/demo.md: 3 seeds)
HOLDOUT=demo-potted-cactus           # the MVDreamBooth subject: kept out of fit, learned from 4 photos
TOKEN="a photo of xjq object"        # its rare-token prompt (paper §3.4)
# A third orbit is rendered for validation and held out of training (views 32-47: --val-views); the first two
# are the training data, exactly as rendered without it. Every sampled view is scored on the held-out orbit.
VAL_VIEWS=$(seq -s, 32 47)
EVAL_ORBIT=2
SDS_UIDS=(demo-traffic-cone demo-chair demo-kettle)  # one rotationally symmetric object, two that are not
export RAY_USAGE_STATS_ENABLED=0
# Same cameras for every object; the views of an object and the render-back of a result must match exactly.
RENDER_ARGS=(--views 16 --orbits 3 --resolution 32 --samples 8 --shared-cameras --workers 2 --threads 1
  --set cameras.framing=mvdream)
TIMES=()
tree_rss_kb() {  # resident memory of this script's whole process tree (Ray's workers included), in kB
  ps -eo pid=,ppid=,rss= | awk -v root=$$ '{up[$1] = $2; rss[$1] = $3}
    END {for (p in up) {q = p; while (q in up && q != root && q > 1) q = up[q]; if (q == root) s += rss[p]}; print s + 0}'
}
PEAK_FILE=$(mktemp)
trap 'kill "${SAMPLER:-}" 2>/dev/null || true; rm -f "$PEAK_FILE"' EXIT  # (set -e holds in the trap too)
sample_peak() {  # the step's peak of tree_rss_kb, sampled twice a second into $PEAK_FILE
  local peak=0 now
  while :; do now=$(tree_rss_kb); ((now > peak)) && peak=$now && echo "$peak" > "$PEAK_FILE"; sleep 0.5; done
}
step() {  # a heading per step, with the time and peak memory of the previous one (listed again at the end)
  if [ -n "${STEP_NAME:-}" ]; then
    kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true
    TIMES+=("$(printf '%-18s %4d s  %6.2f GB peak' "$STEP_NAME" $((SECONDS - STEP_START)) \
      "$(awk '{print $1 / 1048576}' "$PEAK_FILE")")")
  fi
  STEP_NAME=$1 STEP_START=$SECONDS
  echo 0 > "$PEAK_FILE"
  if [ -n "$1" ]; then echo "== $1: $2"; sample_peak & SAMPLER=$!; fi
  return 0
}
caption() { $BIN/python -c "import json,sys; print(json.load(open(sys.argv[1]))['caption'])" \
  "$(find "$OUT/renders" -path "*/$1/meta.json" | head -1)"; }

step "render" "the 12 demo objects, the same 3 orbits x 16 cameras for every object, 32 px"
$BIN/mvdata render demo --out "$OUT/renders" "${RENDER_ARGS[@]}"

step "filter" "quality gates (the tiny random CLIP's scores are recorded; keep-fraction 1 keeps all that pass)"
$BIN/mvdata make-tiny-clip --out "$OUT/models/tiny-clip"
$BIN/mvdata filter "$OUT/renders" --out "$OUT/filter" --clip-pretrained "local-dir:$OUT/models/tiny-clip" \
  --keep-fraction 1.0 --engine local

step "shard + verify" "every object but the DreamBooth subject in train, its third orbit held out for validation"
$BIN/mvdata shard "$OUT/renders" --selection "$OUT/filter/selection.parquet" --out "$OUT/shards" \
  --exclude "$HOLDOUT" --val-fraction 0 --val-views "$VAL_VIEWS" --max-count 4 --workers 0 \
  --views-2d "$OUT/shards-2d"
$BIN/mvdata verify "$OUT/shards"

step "fit-vae" "the autoencoder fitted to the renders (a random VAE cannot reconstruct them)"
$BIN/mvtrain make-tiny-sd --out "$OUT/models/world-init" --variant world --prediction-type v_prediction \
  --attention-heads 1 --seed "$SEED"  # one head: a 3.8x faster UNet forward and backward (docs/benchmarks.md)
$BIN/mvtrain fit-vae --model "$OUT/models/world-init" --shards "$OUT/shards" --out "$OUT/models/world-sd" \
  --max-steps 600 --set seed="$SEED"

step "fit" "the multi-view UNet from scratch, 3D and 2D batches mixed (paper §3.3), $STEPS steps"
$BIN/mvtrain fit --config configs/world-fit.toml --model "$OUT/models/world-sd" --shards "$OUT/shards" \
  --shards-2d "$OUT/shards-2d/2d-000000.tar" --out "$OUT/train" --max-steps "$STEPS" --set seed="$SEED"

step "sample" "4 views of one caption through the multi-view diffusers pipeline"
PIPE="$OUT/models/mv-pipeline"  # the trained model as a diffusers pipeline directory (kept when up to date)
# A pipeline without the record of the weights it came from predates the v-prediction fix (docs/demo.md): its
# scheduler may say epsilon for this v model, so it is written again.
[ -f "$PIPE/mvforge_saved_from.json" ] || rm -rf "$PIPE"
SAVE=(--save-pipeline "$PIPE")
$BIN/mvtrain sample --model "$OUT/train" --prompt "$(caption demo-chair)" --out "$OUT/samples" --steps 20 \
  --guidance-scale 5 --elevation 28 --resolution 32 --device cpu "${SAVE[@]}"

step "eval" "every trained caption sampled at the held-out orbit's cameras, scored against the renders"
$BIN/python - "$OUT" "$HOLDOUT" <<'PY'
import json, pathlib, sys
out, holdout = pathlib.Path(sys.argv[1]), sys.argv[2]
lines = [f"{m['uid']}\t{m['caption']}" for m in (json.loads(p.read_text()) for p in sorted(out.glob("renders/*/*/meta.json")))
         if m["uid"] != holdout]
(out / "trained-captions.tsv").write_text("\n".join(lines) + "\n")
PY
$BIN/mvtrain eval --known-answer --model "$OUT/train" --reference "$OUT/renders" \
  --prompts "$OUT/trained-captions.tsv" --out "$OUT/eval" --device cpu --set orbit="$EVAL_ORBIT"

step "sds" "text to 3D with the world model as the prior (configs/sds-world-cpu.toml), 3 captions"
for uid in "${SDS_UIDS[@]}"; do
  $BIN/mvtrain sds --config configs/sds-world-cpu.toml --model "$OUT/train" --prompt "$(caption "$uid")" \
    --out "$OUT/sds/$uid"
done
# Each mesh under its ground-truth uid (a captions file the render reads), so it is rendered back from the same
# cameras under the same light as its object.
$BIN/python - "$OUT" "${SDS_UIDS[@]}" <<'PY'
import json, pathlib, sys
out, uids = pathlib.Path(sys.argv[1]), sys.argv[2:]
caption = {m["uid"]: m["caption"] for m in (json.loads(p.read_text()) for p in out.glob("renders/*/*/meta.json"))}
with open(out / "sds-meshes.jsonl", "w") as f:
    for uid in uids:
        mesh = (out / "sds" / uid / "mesh.glb").resolve()  # each caption's run is its --out, sds/<uid>/
        f.write(json.dumps({"uid": uid, "path": str(mesh), "caption": caption[uid]}) + "\n")
PY

step "sds render-back" "each mesh rendered under its object's uid (the same cameras and light), and a sphere"
mapfile -t MESHES < <($BIN/python -c "import json,sys; [print(json.loads(l)['path']) for l in open(sys.argv[1])]" \
  "$OUT/sds-meshes.jsonl")
$BIN/mvdata render "${MESHES[@]}" --captions "$OUT/sds-meshes.jsonl" --out "$OUT/sds-renders" "${RENDER_ARGS[@]}"
$BIN/python - "$OUT" "${SDS_UIDS[@]}" <<'PY'
# The baseline: an untrained prior's SDS result is a grey blob; a grey sphere stands in for it.
import json, pathlib, sys, trimesh
out, uids = pathlib.Path(sys.argv[1]), sys.argv[2:]
(out / "blob").mkdir(exist_ok=True)
with open(out / "blob" / "blob.jsonl", "w") as f:
    for uid in uids:
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
        sphere.visual.vertex_colors = [128, 128, 128, 255]
        path = (out / "blob" / f"{uid}.glb").resolve()
        sphere.export(path)
        f.write(json.dumps({"uid": uid, "path": str(path), "caption": "a grey blob"}) + "\n")
PY
$BIN/mvdata render "$OUT"/blob/*.glb --captions "$OUT/blob/blob.jsonl" --out "$OUT/blob-renders" "${RENDER_ARGS[@]}"
$BIN/mvtrain eval --known-answer --generated "$OUT/sds-renders" --baseline "$OUT/blob-renders" \
  --reference "$OUT/renders" --out "$OUT/eval-sds"

step "dreambooth" "the held-out $HOLDOUT learned from 4 photos of its second orbit, scored on the held-out third"
PHOTOS="$OUT/dreambooth-photos"
OBJ=$(dirname "$(find "$OUT/renders" -path "*/$HOLDOUT/meta.json" | head -1)")
mkdir -p "$PHOTOS"
for i in 016 020 024 028; do cp "$OBJ/$i.png" "$PHOTOS/view-$i.png"; done
# Prior preservation by rehearsal: 4 renders of every trained object with its caption (<stem>.txt beside each),
# instead of generated images of one class prompt; dreambooth composites them on grey like the photos.
$BIN/python - "$OUT" "$HOLDOUT" <<'PY'
import json, pathlib, shutil, sys
out, holdout = pathlib.Path(sys.argv[1]), sys.argv[2]
rehearsal = out / "dreambooth-rehearsal"
rehearsal.mkdir(exist_ok=True)
for meta_path in sorted(out.glob("renders/*/*/meta.json")):
    meta = json.loads(meta_path.read_text())
    if meta["uid"] == holdout:
        continue
    for view in (0, 8, 20, 28):  # trained views (the held-out orbit stays unseen)
        shutil.copyfile(meta_path.parent / f"{view:03d}.png", rehearsal / f"{meta['uid']}-{view:03d}.png")
        (rehearsal / f"{meta['uid']}-{view:03d}.txt").write_text(meta["caption"] + ", 3d asset\n")
PY
$BIN/mvtrain dreambooth --model "$PIPE" --images "$PHOTOS" --prompt "$TOKEN, 3d asset" --out "$OUT/dreambooth" \
  --max-steps 300 --device cpu --class-prompt "a photo of an object, 3d asset" --validate-every 0 \
  --class-images "$OUT/dreambooth-rehearsal" --set prior_loss_weight=1 \
  --set resolution=32 --set batch_size=4 --set checkpoint_every=50 --set log_every=10 \
  --set optim.lr=3e-3 --lambda 1  # the world's scale, not SD 2.1's 2e-6; the rehearsal keeps the rest
{ cat "$OUT/trained-captions.tsv"; printf '%s\t%s\n' "$HOLDOUT" "$TOKEN"; } > "$OUT/dreambooth-captions.tsv"
$BIN/mvtrain eval --known-answer --model "$OUT/dreambooth" --reference "$OUT/renders" \
  --prompts "$OUT/dreambooth-captions.tsv" --out "$OUT/eval-dreambooth" --device cpu --set "shifts_deg=[]" \
  --set orbit="$EVAL_ORBIT"

step report "one HTML page with every result beside its ground truth"
$BIN/mvdata report "$OUT"
step "" ""
echo "== times (a second run resumes every step: it takes seconds)"
printf '  %s\n' "${TIMES[@]}"
printf '  %-18s %4d s\n' total "$SECONDS"
$BIN/python scripts/demo_check.py "$OUT"
