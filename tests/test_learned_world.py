"""The chain learns (docs/demo.md): a 3-object world of non-symmetric demo objects is rendered from shared
cameras, sharded, its VAE fitted and a multi-view UNet trained from scratch through the CLI, then every caption
sampled at its object's cameras must retrieve its own object, and samples at azimuths shifted by 90° and 180°
must be further from the truth than the samples at the true cameras. A camera convention that differs between
stages (azimuth flipped, c2w transposed), a zeroed camera embedding or swapped CFG branches break these.

Thresholds from three seeds (docs/demo.md): the one-head UNet at 900 v-prediction steps retrieved 3/3 and had 6
of 6 shifted samples further on every seed; the sabotaged samplers scored 0-2 of 6 (or 0/3 retrieved), below
the threshold of 5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mvforge.assets import list_demo_objects

# The fixture trains a world (225-300 s on 2 quiet cores); a busy machine doubles that, past the suite's
# 600 s timeout, so its tests get 1,500 s (the fixture's setup counts against the first test's).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
OBJECTS = ("demo-bench", "demo-chair", "demo-kettle")
# The seed of the weights, the VAE fit and the UNet fit. CI runs seed 0; the thresholds come from seeds 0-2
# (docs/demo.md): `MVFORGE_WORLD_SEED=1 pytest tests/test_learned_world.py`.
SEED = int(os.environ.get("MVFORGE_WORLD_SEED", "0"))
# The UNet's attention heads and its steps: one head of 32 channels trains 1.9-3.8x faster than 8 of 4, by the
# CPU (`make demo`'s UNet, docs/benchmarks.md); at 600 steps it failed to learn the camera on one seed of three
# (seed 0: 3 of 6), at 900 it learned it on all (docs/demo.md). The test before:
# `MVFORGE_WORLD_HEADS=8 MVFORGE_WORLD_STEPS=600 pytest tests/test_learned_world.py`.
HEADS = int(os.environ.get("MVFORGE_WORLD_HEADS", "1"))
STEPS = int(os.environ.get("MVFORGE_WORLD_STEPS", "900"))


def _run(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env, timeout=1200
    )
    assert done.returncode == 0, f"{args[:2]}: {done.stderr[-3000:]}"
    return done.stdout


# `mvtrain`'s entry point run once per command, in one Python process that reads the commands from its stdin:
# torch, diffusers and transformers are imported once instead of four times (about 7 s each on a 2-core CPU),
# and that import and the tiny model's creation run while Blender renders the world. Each command still parses
# its own argv and seeds itself, so its output is the one a separate `mvtrain` process writes.
_ONE_PROCESS = """
import json, sys, traceback
from mvforge.cli.mvtrain import main
for line in sys.stdin:
    args = json.loads(line)
    sys.argv = ["mvtrain", *args]
    try:
        main()
    except SystemExit as e:
        if e.code not in (0, None):
            sys.exit(f"mvtrain {args[0]} exited {e.code}")
    except BaseException:
        traceback.print_exc()
        sys.exit(f"mvtrain {args[0]} raised the exception above")
"""


class _Mvtrain:
    """The one `mvtrain` process: :meth:`send` queues a command, :meth:`finish` waits for all of them."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), RAY_USAGE_STATS_ENABLED="0")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ONE_PROCESS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, *args: str) -> None:
        try:
            self.proc.stdin.write(json.dumps(list(args)) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # an earlier command failed and the process ended: finish() says why
            self.finish()

    def finish(self) -> str:
        try:
            out, err = self.proc.communicate(timeout=1200)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 0, f"mvtrain: {err[-3000:]}"
        return out


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    demo = {d.uid: d for d in list_demo_objects()}
    side = root / "captions.jsonl"
    side.write_text(
        "".join(
            json.dumps({"uid": u, "path": str(demo[u].path), "caption": demo[u].caption}) + "\n"
            for u in OBJECTS
        )
    )
    # Blender renders the world while the mvtrain process imports torch and makes the untrained model.
    mvtrain = _Mvtrain()
    try:
        mvtrain.send(
            "make-tiny-sd",
            "--out",
            str(root / "init"),
            "--variant",
            "world",
            "--prediction-type",
            "v_prediction",
            "--seed",
            str(SEED),
            "--attention-heads",
            str(HEADS),
        )
        _run(
            "mvdata",
            "render",
            *(str(demo[u].path) for u in OBJECTS),
            "--captions",
            str(side),
            "--out",
            str(root / "renders"),
            "--views",
            "16",
            "--orbits",
            "2",
            "--resolution",
            "32",
            "--samples",
            "8",
            "--shared-cameras",
            "--workers",
            "1",
            "--threads",
            "2",
            "--set",
            "cameras.framing=mvdream",
        )
        _run(
            "mvdata",
            "shard",
            str(root / "renders"),
            "--out",
            str(root / "shards"),
            "--val-fraction",
            "0",
            "--workers",
            "0",
        )
        mvtrain.send(
            "fit-vae",
            "--model",
            str(root / "init"),
            "--shards",
            str(root / "shards"),
            "--out",
            str(root / "sd"),
            "--max-steps",
            "400",
            "--set",
            f"seed={SEED}",
        )
        mvtrain.send(
            "fit",
            "--config",
            str(ROOT / "configs" / "world-fit.toml"),
            "--model",
            str(root / "sd"),
            "--shards",
            str(root / "shards"),
            "--out",
            str(root / "run"),
            "--max-steps",
            str(STEPS),
            "--set",
            f"checkpoint_every={STEPS}",
            "--set",
            "validation.every=0",  # its shards hold no val split (the demo's do: --val-views)
            "--set",
            "validation.loss_batches=0",
            "--set",
            f"seed={SEED}",
        )
        mvtrain.send(
            "eval",
            "--known-answer",
            "--model",
            str(root / "run"),
            "--reference",
            str(root / "renders"),
            "--out",
            str(root / "eval"),
            "--device",
            "cpu",
        )
        mvtrain.finish()
    finally:
        if mvtrain.proc.poll() is None:  # a failed render or shard: stop the mvtrain process
            mvtrain.proc.kill()
            mvtrain.proc.wait()
    return root


def test_each_caption_retrieves_its_own_object_at_the_true_cameras(world):
    doc = json.loads((world / "eval" / "known_answer.json").read_text())
    assert {r["uid"]: r["retrieved"] for r in doc["captions"]} == {u: u for u in OBJECTS}
    assert doc["summary"]["blank_image_retrieves_own"] < 3  # the baseline does not


def test_samples_turn_with_the_camera(world):
    doc = json.loads((world / "eval" / "known_answer.json").read_text())
    further, total = map(int, doc["summary"]["shifted_cameras_further"].split("/"))
    assert total == 6 and further >= 5
