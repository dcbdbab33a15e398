"""The demo's render-back, shared by the bench scripts that score meshes as `make demo` scores SDS meshes.

Each mesh is rendered with the demo's render settings (scripts/demo.sh ``RENDER_ARGS``, less the third orbit the
demo holds out: the scoring uses the first) under the uid of its ground-truth object, so from the same cameras
under the same light, then scored with
`mvtrain eval --known-answer --generated`'s scoring (``score_renders``) against the world's renders.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mvforge.eval.known_answer import KnownAnswerConfig, score_renders

BIN = Path(sys.executable).parent
RENDER_ARGS = ["--views", "16", "--orbits", "2", "--resolution", "32", "--samples", "8", "--shared-cameras",
               "--workers", "2", "--threads", "1", "--set", "cameras.framing=mvdream"]  # fmt: skip


def render_and_score(entries: list[dict], out: Path, world: Path) -> dict[str, dict]:
    """Render ``entries`` (``{"uid", "path", "caption"}``: a mesh under its object's uid) into ``out/renders``
    and score them against ``world/renders`` into ``out/eval``; returns ``known_answer.json``'s row per uid
    (``iou``, ``iou_others``, ``retrieved``, ...). Raises CalledProcessError when the render fails."""
    (out / "meshes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    subprocess.run(
        [str(BIN / "mvdata"), "render", *(e["path"] for e in entries), "--captions", str(out / "meshes.jsonl"),
         "--out", str(out / "renders"), *RENDER_ARGS],
        check=True, capture_output=True,
    )  # fmt: skip
    doc = score_renders(out / "renders", world / "renders", out / "eval", KnownAnswerConfig())
    return {r["uid"]: r for r in doc["captions"]}
