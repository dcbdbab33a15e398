"""The README's and docs/demo.md's pictures of a `make demo` output, from the strips `mvtrain eval --known-answer`
writes (``<eval>/known_answer/<uid>.png``: rows of 4 views, the truth first, then the result at the true cameras,
then at the shifted ones):

- ``demo-world.png``: for 8 trained captions, the ground truth above the views the model samples for the caption at
  the same cameras (``OUT/eval``: the held-out orbit);
- ``demo-sds.png``: for the SDS captions, the object's renders above its SDS mesh rendered back from the same
  cameras and light (``OUT/eval-sds``).

    .venv/bin/python scripts/demo_pictures.py demo-out docs/images

Each picture is upscaled 2x (nearest) so the 32-px views read on a page. Exits 2 with one line when a strip is
missing (the demo has not finished).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from mvforge.formats import eval_result

WORLD_UIDS = (
    "demo-chair",
    "demo-donut",
    "demo-mushroom",
    "demo-snowman",
    "demo-table-lamp",
    "demo-traffic-cone",
    "demo-mug",
    "demo-desk",
)
SDS_UIDS = ("demo-traffic-cone", "demo-chair", "demo-kettle")
GAP = 8  # white pixels between tiles (at the upscaled size)
SCALE = 2


def _two_rows(eval_dir: Path, uid: str) -> Image.Image:
    """The truth row and the result row of ``uid``'s strip (its first half of 4 rows, or all of 2)."""
    path = eval_result.known_answer_strip(eval_dir, uid)
    if not path.is_file():
        print(f"error: {path} is missing; run `make demo` to the end first", file=sys.stderr)
        sys.exit(2)
    strip = Image.open(path).convert("RGB")
    side = strip.width // 4  # 4 views per row
    top = strip.crop((0, 0, strip.width, 2 * side))
    return top.resize((top.width * SCALE, top.height * SCALE), Image.NEAREST)


def _tile(tiles: list[Image.Image], columns: int) -> Image.Image:
    w, h = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * w + (columns - 1) * GAP, rows * h + (rows - 1) * GAP), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (w + GAP), (i // columns) * (h + GAP)))
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("out", type=Path, help="a finished `make demo` output directory")
    ap.add_argument("images", type=Path, help="where demo-world.png and demo-sds.png go")
    args = ap.parse_args()
    if not args.out.is_dir():
        print(f"error: {args.out} is not a directory; pass the directory `make demo` wrote", file=sys.stderr)
        sys.exit(2)
    if args.images.exists() and not args.images.is_dir():
        print(f"error: {args.images} is a file; pass a directory for the pictures", file=sys.stderr)
        sys.exit(2)
    world = _tile([_two_rows(args.out / "eval", u) for u in WORLD_UIDS], columns=4)
    sds = _tile([_two_rows(args.out / "eval-sds", u) for u in SDS_UIDS], columns=1)
    args.images.mkdir(parents=True, exist_ok=True)  # only once every strip was read
    for name, picture in (("demo-world.png", world), ("demo-sds.png", sds)):
        picture.save(args.images / name, optimize=True)
        print(args.images / name)


if __name__ == "__main__":
    main()
