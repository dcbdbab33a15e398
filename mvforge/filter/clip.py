"""Per-object CLIP scoring; the model comes from ``mvforge.models.clip.load_clip``, the one open_clip loader (of
real weights and the tiny test model alike, shared with `mvtrain eval`; design §1).

A ``Scorer`` is the callable class Ray Data runs in each actor (design §4): it loads the model once in its
constructor, then turns a batch of uids into one score row per object. The rows' views are decoded here,
inside the actor, so the dataset carries one small row per object and never a shuffle by uid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from mvforge.devices import resolve_device
from mvforge.errors import UserError
from mvforge.filter.config import FilterConfig
from mvforge.filter.gates import PIXEL_COLUMNS, pixel_metrics, view_metrics
from mvforge.formats import renders as layout
from mvforge.models.clip import clip_spec, load_clip

# Reasons an object gets no score (recorded in scores.parquet, never raised).
NOT_SCORABLE = (
    "empty_text",
    "unreadable_meta",
    "unreadable_cameras",
    "no_views",
    "missing_view",
    "unreadable_view",
)

# The part/score file schema is explicit: a batch whose objects all lack a score must not infer null types.
SCORE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("text", pa.string()),
        ("model", pa.string()),
        ("pretrained", pa.string()),
        ("template", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("views_rendered", pa.int32()),
        ("views", pa.list_(pa.int32())),
        ("cosines", pa.list_(pa.float64())),
        ("view_coverage", pa.list_(pa.float64())),
        ("view_border", pa.list_(pa.float64())),
        ("view_color_std", pa.list_(pa.float64())),
        # Issue 11: the pixel safety net, the framing the views were rendered with, stripped textures.
        *[(name, pa.list_(pa.float64())) for name in PIXEL_COLUMNS],
        ("framing", pa.string()),
        ("stripped_textures", pa.int32()),
    ]
)


def conform(table: pa.Table, where: str) -> pa.Table:
    """Stored score rows ``table`` (read from ``where``) in SCORE_SCHEMA's column order and types. Raises
    UserError when a column is missing: the file was not written by this mvforge's filter."""
    missing = [name for name in SCORE_SCHEMA.names if name not in table.column_names]
    if missing:
        raise UserError(
            f"{where} has no score column {', '.join(missing)}; pass --rescore to score the renders again"
        )
    return table.select(SCORE_SCHEMA.names).cast(SCORE_SCHEMA)


# --- loading -------------------------------------------------------------------------------------------------


def model_spec(cfg: FilterConfig) -> tuple[str, str | None]:
    """(open_clip model_name, pretrained) of ``cfg.model`` after validating that the weights exist where they
    are named (``mvforge.models.clip.clip_spec``: the errors it raises, naming ``--clip-pretrained``
    and ``--clip-model-config``). The driver calls it before Ray starts, so a bad name is one line, not actor tracebacks."""
    m = cfg.model
    return clip_spec(m.name, m.pretrained, m.model_config_file)


# --- reading one object ----------------------------------------------------------------------------------------


def object_text(meta: dict, cfg: FilterConfig) -> str:
    """The object's caption or name (+ tags) in the template; "" when it has no text at all."""
    base = ""
    for key in cfg.text.fields:
        value = meta.get(key)
        if isinstance(value, str) and value.strip():
            base = " ".join(value.split())
            break
    if not base:
        return ""
    if cfg.text.include_tags:
        tags = [t.get("name", "") if isinstance(t, dict) else str(t) for t in meta.get("tags") or []]
        tags = [t.strip() for t in tags if t and t.strip()][: cfg.text.max_tags]
        if tags:
            base = f"{base}, {', '.join(tags)}"
    return cfg.text.template.format(base)


def view_subset(n_rendered: int, count: int) -> list[int]:
    """``count`` view indices evenly spaced over ``n_rendered`` (8 of 32 -> 0, 4, ..., 28); all if fewer."""
    if n_rendered <= count:
        return list(range(n_rendered))
    return [math.floor(i * n_rendered / count) for i in range(count)]


def composite(rgba: Image.Image, background_rgb: tuple[int, int, int]) -> Image.Image:
    """Straight-alpha RGBA over an opaque background (rgb*a + bg*(1-a), design §6), as RGB."""
    bg = Image.new("RGBA", rgba.size, (*background_rgb, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def read_view(path: Path) -> Image.Image:
    """Decode one view fully (PIL opens lazily: a truncated PNG fails in ``load``, so force it here)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGBA")


class _Row:
    """One object's result while its batch is being scored."""

    def __init__(self, uid: str):
        self.uid = uid
        self.text = ""
        self.reason = ""
        self.message = ""
        self.views_rendered = 0
        self.views: list[int] = []
        self.images: list[Image.Image] = []
        self.metrics: list[tuple[float, float, float]] = []
        self.pixels: list[tuple[float, float, float, float]] = []
        self.framing: str | None = None
        self.stripped_textures = 0
        self.cosines: list[float] = []

    def fail(self, reason: str, message: str, keep_metrics: bool = False) -> None:
        self.reason, self.message = reason, message
        self.images = []
        if not keep_metrics:  # a partly read object gets no gate results: its reason says why
            self.metrics, self.pixels, self.views = [], [], []


def read_object(root: Path, uid: str, cfg: FilterConfig) -> _Row:
    """Text, chosen views (composited) and gate measurements of one object; problems become a reason."""
    row = _Row(uid)
    obj = layout.RenderedObject(uid, layout.object_dir(root, uid))
    try:
        meta = obj.meta
    except (OSError, ValueError) as e:
        row.fail("unreadable_meta", f"{layout.META}: {e}")
        return row
    try:
        views = obj.cameras["views"]
        files = [v["file"] for v in views]
        row.framing = obj.cameras.get("framing")
    except (OSError, ValueError, KeyError, TypeError) as e:
        row.fail("unreadable_cameras", f"{layout.CAMERAS}: {e}")
        return row
    row.views_rendered = len(files)
    stats = meta.get("stats") if isinstance(meta, dict) else None
    row.stripped_textures = int((stats or {}).get("stripped_textures") or 0)
    if not files:  # nothing to score or measure: without this reason it would pass as a NaN score
        row.fail("no_views", f"{layout.CAMERAS} lists no views")
        return row
    row.views = view_subset(len(files), cfg.views.count)
    for i in row.views:
        path = obj.path / files[i]
        if not path.is_file():
            row.fail("missing_view", f"view {files[i]} listed in {layout.CAMERAS} does not exist")
            return row
        try:
            rgba = read_view(path)
        except (OSError, ValueError, SyntaxError) as e:
            row.fail("unreadable_view", f"{files[i]}: {e}")
            return row
        rgb = composite(rgba, cfg.views.background_rgb)
        row.metrics.append(view_metrics(np.asarray(rgba), np.asarray(rgb), cfg.gates.alpha_threshold))
        row.pixels.append(pixel_metrics(np.asarray(rgba), cfg.gates.alpha_threshold))
        row.images.append(rgb)
    # The text is checked after the views so an untitled object still gets its gate measurements.
    row.text = object_text(meta, cfg)
    if not row.text:
        row.fail("empty_text", f"meta.json has no non-empty {' / '.join(cfg.text.fields)}", keep_metrics=True)
    return row


# --- the scorer --------------------------------------------------------------------------------------------------


class Scorer:
    """Loads the model once; ``scorer({"uid": [...]})`` returns a pyarrow Table of SCORE_SCHEMA rows.

    Used as the Ray Data callable class (one per actor) and directly by the in-process engine.
    """

    def __init__(self, root: str, cfg: FilterConfig, device: str = "auto", threads: int | None = None):
        import open_clip
        import torch

        if threads:
            torch.set_num_threads(max(1, int(threads)))  # an actor owns cpus_per_worker cores, not the node
        self.root = Path(root)
        self.cfg = cfg
        self.device = resolve_device(device)
        m = cfg.model
        clip = load_clip(m.name, m.pretrained, m.model_config_file, precision=m.precision, device=self.device)
        self.model_name, self.model = clip.name, clip.model
        self.preprocess, self.tokenizer = clip.preprocess, clip.tokenizer
        # open_clip's fp16/bf16 is mixed precision (LayerNorms stay fp32): the input dtype is its own rule.
        self.dtype = open_clip.get_input_dtype(cfg.model.precision) or torch.float32

    def encode_images(self, images: list[Image.Image]):
        """L2-normalised image embeddings (float32), ``image_batch_size`` images per forward."""
        import torch

        out = []
        bs = self.cfg.model.image_batch_size
        with torch.inference_mode():
            for s in range(0, len(images), bs):
                x = torch.stack([self.preprocess(im) for im in images[s : s + bs]])
                f = self.model.encode_image(x.to(self.device, self.dtype))
                out.append(torch.nn.functional.normalize(f.float(), dim=-1))
        return torch.cat(out)

    def encode_texts(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            f = self.model.encode_text(self.tokenizer(texts).to(self.device))
            return torch.nn.functional.normalize(f.float(), dim=-1)

    def score_rows(self, rows: list[_Row]) -> None:
        """Fill ``cosines`` of every scorable row: one image pass over all their views, one text pass."""
        scorable = [r for r in rows if not r.reason]
        if not scorable:
            return
        images = [im for r in scorable for im in r.images]
        texts = sorted({r.text for r in scorable})
        img = self.encode_images(images)
        txt = self.encode_texts(texts)
        text_index = {t: i for i, t in enumerate(texts)}
        start = 0
        for r in scorable:
            n = len(r.images)
            cos = img[start : start + n] @ txt[text_index[r.text]]
            r.cosines = cos.cpu().double().tolist()
            start += n

    def __call__(self, batch: dict) -> pa.Table:
        uids = [str(u) for u in batch["uid"]]
        if self.cfg.run.read_threads > 1 and len(uids) > 1:
            # zlib (PNG) and PIL's resampling release the GIL: on a many-core GPU node the decode of a batch
            # must not leave the accelerator idle for a single core's worth of PNGs.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.cfg.run.read_threads, len(uids))) as pool:
                rows = list(pool.map(lambda u: read_object(self.root, u, self.cfg), uids))
        else:
            rows = [read_object(self.root, u, self.cfg) for u in uids]
        self.score_rows(rows)
        return pa.Table.from_pydict(
            {
                "uid": [r.uid for r in rows],
                "text": [r.text for r in rows],
                "model": [self.model_name] * len(rows),
                "pretrained": [self.cfg.model.pretrained] * len(rows),
                "template": [self.cfg.text.template] * len(rows),
                "reason": [r.reason for r in rows],
                "message": [r.message for r in rows],
                "views_rendered": [r.views_rendered for r in rows],
                "views": [r.views for r in rows],
                "cosines": [r.cosines for r in rows],
                "view_coverage": [[v[0] for v in r.metrics] for r in rows],
                "view_border": [[v[1] for v in r.metrics] for r in rows],
                "view_color_std": [[v[2] for v in r.metrics] for r in rows],
                **{name: [[v[k] for v in r.pixels] for r in rows] for k, name in enumerate(PIXEL_COLUMNS)},
                "framing": [r.framing for r in rows],
                "stripped_textures": [r.stripped_textures for r in rows],
            },
            schema=SCORE_SCHEMA,
        )
