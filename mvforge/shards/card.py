"""The dataset card (``README.md``) of a shard directory: the YAML header the Hugging Face Hub and ``datasets``
read, and a short description (docs/ecosystem.md §4).

The header's ``configs`` names the tars of each split, so ``datasets.load_dataset(<shard dir>)`` (and the Hub's
viewer) read only the tars: without it, ``datasets`` also took ``<name>.stats.json`` for data and failed.
``dataset_info.features`` types the columns webdataset's builder yields per sample (one image column per view,
the cameras, the caption, the parts of the json a dataset user filters on); json keys it does not list are
left out by ``load_dataset`` and stay in the tars. The card is a pure function of the index document, so
shards resumed, re-run or written in another folder get the same bytes.
"""

from __future__ import annotations

from typing import Any

from mvforge.formats import shards as fmt

HF_SPLITS = {"train": "train", "val": "validation"}
"""mvforge split -> the split name datasets and the Hub use."""

_VIEW_FIELDS = (
    ("index", "int64"),
    ("orbit", "int64"),
    ("elevation_deg", "float64"),
    ("azimuth_deg", "float64"),
    ("fov_deg", "float64"),
    ("distance", "float64"),
)
_MATRIX = ["sequence:", "  sequence: float64"]


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "1M<n<10M"


def _features(num_views: int) -> list[str]:
    """YAML lines of ``dataset_info.features`` (datasets' own YAML form of a ``Features``)."""
    lines = ["  features:", "  - name: __key__", "    dtype: string"]
    for i in range(num_views):
        lines += [f"  - name: {fmt.png_ext(i)}", "    dtype: image"]
    lines += [f"  - name: {fmt.CAMERAS_EXT}", "    sequence:", "      sequence:", "        sequence: float32"]
    lines += [f"  - name: {fmt.JSON_EXT}", "    struct:", "    - name: uid", "      dtype: string"]
    lines += [
        "    - name: convention",
        "      dtype: string",
        "    - name: resolution",
        "      sequence: int64",
    ]
    lines += ["    - name: views", "      list:"]
    for name, dtype in _VIEW_FIELDS:
        lines += [f"      - name: {name}", f"        dtype: {dtype}"]
    for name in ("c2w", "K"):
        lines += [f"      - name: {name}"] + [f"        {x}" for x in _MATRIX]
    lines += ["    - name: meta", "      struct:"]
    for name, dtype in (("caption", "string"), ("name", "string"), ("seed", "int64"), ("engine", "string")):
        lines += [f"      - name: {name}", f"        dtype: {dtype}"]
    lines += ["      - name: tags", "        sequence: string", "      - name: source", "        struct:"]
    for name in ("kind", "file", "url", "sha256"):
        lines += [f"        - name: {name}", "          dtype: string"]
    lines += [f"  - name: {fmt.TXT_EXT}", "    dtype: string"]
    return lines


def dataset_card(index: dict[str, Any], num_views: int, title: str = "mvforge multi-view renders") -> str:
    """README.md text for the shard directory of ``index`` (the index.json document) whose samples hold
    ``num_views`` views. Splits without shards are left out (``datasets`` refuses a split that matches no
    file)."""
    totals = index["totals"]
    splits = [s for s in fmt.SPLITS if totals[s]["shards"] > 0]
    lines = [
        "---",
        "license: other",
        "license_name: per-object",
        "tags: [mvforge, mvdream, multi-view, 3d, webdataset]",
        "task_categories: [text-to-3d]",
        f"size_categories: [{_size_category(totals['samples'])}]",
        f"pretty_name: {title}",
        "configs:",
        "- config_name: default",
        "  data_files:",
    ]
    for s in splits:
        lines += [f"  - split: {HF_SPLITS[s]}", f'    path: "{s}-*.tar"']
    lines += ["dataset_info:", *_features(num_views), "  splits:"]
    for s in splits:
        lines += [f"  - name: {HF_SPLITS[s]}", f"    num_examples: {totals[s]['samples']}"]
    lines += ["---", ""]
    counts = ", ".join(
        f"{HF_SPLITS[s]} {totals[s]['samples']} objects in {totals[s]['shards']} tars" for s in splits
    )
    lines += [
        f"# {title}",
        "",
        f"Multi-view renders of 3D objects written by `mvdata shard` (mvforge {index.get('mvforge', '')}): "
        f"{counts}. Format `{index['format']}` v{index['format_version']}.",
        "",
        *(
            [
                f"The validation split holds views {', '.join(map(str, held))} of the train objects (held out of "
                "training: `mvdata shard --val-views`), one sample per object with the train sample's key.",
                "",
            ]
            if (held := index.get("config", {}).get("val_views"))
            else []
        ),
        "## Samples",
        "",
        "One webdataset sample per object, key = the object's uid:",
        "",
        f"- `000.png` ... `{fmt.png_ext(num_views - 1)}`: the views, RGBA, 8-bit, straight alpha, sRGB, as rendered "
        "(never re-encoded);",
        f"- `{fmt.CAMERAS_EXT}`: (V, 4, 4) float32 camera-to-world matrices in view order (OpenGL axes, Z up, "
        "object in the unit cube at the origin);",
        f"- `{fmt.JSON_EXT}`: uid, per-view cameras (elevation, azimuth, fov, distance, c2w, intrinsics K), the "
        "render settings and the object's source name, sha256 and URL (no machine-local data);",
        f"- `{fmt.TXT_EXT}`: the caption.",
        "",
        "## Loading",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("DIR_OR_REPO")            # the splits above, images decoded',
        "```",
        "",
        "or stream the tars with webdataset; `mvtrain fit --shards DIR` trains on them. `index.json` lists every "
        "tar with its sha256 (`mvdata verify DIR` checks them); `*.stats.json` are per-tar build markers.",
        "",
        "## Licence",
        "",
        "Each object keeps the licence of its source (for Objaverse, the licence on the object's page; the "
        "`json` field `meta.source` names the source). Check it before redistributing; mvforge adds no terms.",
        "",
    ]
    return "\n".join(lines)
