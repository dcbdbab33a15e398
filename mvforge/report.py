"""`mvdata report DIR`: one HTML page summarising whatever stages have run in a run directory.

Reads the on-disk contracts only (design §2): ``renders/`` (§2.1: contact sheet of each ok object's views with
its caption, failures by reason code, render timings), ``filter/`` (§2.2: kept/dropped counts, the threshold
used, a histogram of the aggregate CLIP score as inline SVG) and ``shards/`` (§2.3: shards, samples and bytes
per split from index.json). A stage that has not run, or left nothing readable, gets a line saying so: the
report is useful after any prefix of the pipeline and never fails because a later stage is missing.

Images are relative links from report.html (the run directory stays self-contained and the page small), or,
with ``embed_images``, small base64 PNG thumbnails so the single file can be mailed around.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mvforge.errors import UserError
from mvforge.fsutil import atomic_write_text
from mvforge.render import layout

REPORT = "report.html"


@dataclass(frozen=True)
class ReportConfig:
    """What the HTML report shows (``mvdata report --set views_per_object=4``)."""

    views_per_object: int = 8
    """Views shown per object in the contact sheet, evenly spaced in azimuth over its orbit."""
    thumb_px: int = 96
    """Displayed thumbnail side in CSS pixels (and the pixel size of embedded thumbnails)."""
    max_objects: int = 500
    """At most this many objects in the contact sheet (the first ones by uid); the rest are counted."""
    embed_images: bool = False
    """Embed base64 PNG thumbnails instead of linking the render files (a single portable file)."""
    histogram_bins: int = 20
    """Bins of the CLIP score histogram."""
    max_failures: int = 500
    """At most this many rows in the failures table; the reason counts always cover every failure."""


def write_report(run_dir: Path, cfg: ReportConfig | None = None) -> Path:
    """Write ``run_dir``/report.html from the stage outputs found under ``run_dir``; return its path."""
    cfg = cfg or ReportConfig()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass the --out directory of a run")
    if cfg.views_per_object < 1 or cfg.thumb_px < 8 or cfg.histogram_bins < 1:
        raise UserError("report settings: views_per_object >= 1, thumb_px >= 8 and histogram_bins >= 1")
    out = run_dir / REPORT
    renders = _stage_dir(run_dir, "renders", _looks_like_renders)
    filter_dir = _stage_dir(run_dir, "filter", lambda d: (d / "selection.parquet").is_file())
    shards = _stage_dir(run_dir, "shards", lambda d: (d / "index.json").is_file())

    selection, filter_html = _filter_section(filter_dir, run_dir, cfg)
    render_html = _render_section(renders, run_dir, cfg, selection)
    shard_html = _shard_section(shards)
    train_html = _train_section(run_dir / "train", run_dir / "samples", run_dir, cfg)
    sds_html = _sds_section(run_dir / "sds", run_dir, cfg)
    body = "\n".join(
        [
            f"<h1>mvforge run report: {_e(run_dir.resolve().name)}</h1>",
            '<p class="nav"><a href="#renders">renders</a> · <a href="#filter">filter</a> · '
            '<a href="#shards">shards</a> · <a href="#train">train</a> · <a href="#sds">sds</a></p>',
            render_html,
            filter_html,
            shard_html,
            train_html,
            sds_html,
        ]
    )
    atomic_write_text(out, _page(f"mvforge report: {run_dir.resolve().name}", body, cfg))
    return out


def _looks_like_renders(d: Path) -> bool:
    return (
        (d / layout.MANIFEST).is_file()
        or (d / layout.FAILED_DIR).is_dir()
        or any(d.glob(f"*/*/{layout.META}"))
    )


def _stage_dir(run_dir: Path, name: str, looks_right) -> Path | None:
    """``run_dir/name``; or ``run_dir`` itself when it is that stage's output (``mvdata report renders/``)."""
    if (run_dir / name).is_dir():
        return run_dir / name
    return run_dir if looks_right(run_dir) else None


# --- renders ------------------------------------------------------------------------------------------------


def _render_section(
    root: Path | None, report_dir: Path, cfg: ReportConfig, selection: dict[str, dict]
) -> str:
    head = '<section id="renders"><h2>Renders</h2>'
    if root is None:
        return head + '<p class="none">No render output here (no renders/ directory).</p></section>'
    objects = list(layout.iter_objects(root))
    failures = _read_failures(root)
    parts = [head, f"<p>Directory: <code>{_e(_rel(root, report_dir))}</code></p>"]
    manifest = [r for r in _read_jsonl(root / layout.MANIFEST) if isinstance(r, dict)]
    parts.append(
        _table(
            ["ok objects", "failed objects", "manifest lines"],
            [[len(objects), len(failures), len(manifest) if manifest else "none"]],
        )
    )

    parts.append("<h3>Contact sheet</h3>")
    if not objects:
        parts.append('<p class="none">No object rendered successfully.</p>')
    for obj in objects[: cfg.max_objects]:
        parts.append(_object_card(obj, report_dir, cfg, selection.get(obj.uid)))
    if len(objects) > cfg.max_objects:
        parts.append(
            f"<p>… and {len(objects) - cfg.max_objects} more objects (raise max_objects to see them).</p>"
        )

    parts.append("<h3>Failures</h3>")
    if not failures:
        parts.append('<p class="none">No failures.</p>')
    else:
        counts = Counter(f["reason"] for f in failures)
        parts.append(_table(["reason", "objects"], sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
        rows = [
            [f["uid"], f["reason"], _clip(f["message"], 300), _details("log tail", f["log_tail"])]
            for f in failures[: cfg.max_failures]
        ]
        parts.append(_table(["uid", "reason", "message", "log"], rows, raw_cols={3}))
        if len(failures) > cfg.max_failures:
            parts.append(f"<p>… and {len(failures) - cfg.max_failures} more failure records.</p>")

    parts.append("<h3>Render timings</h3>")
    parts.append(_timings_table(objects))
    parts.append(_config_details(root))
    parts.append("</section>")
    return "\n".join(parts)


def _object_card(obj: layout.RenderedObject, report_dir: Path, cfg: ReportConfig, sel: dict | None) -> str:
    try:
        meta, views = obj.meta, obj.cameras.get("views", [])
    except (OSError, ValueError) as e:
        return f'<div class="card"><b>{_e(obj.uid)}</b>: unreadable ({_e(str(e))})</div>'
    n = len(views)
    k = min(cfg.views_per_object, n)
    picks = sorted({int(i * n / k) for i in range(k)})
    imgs = []
    for i in picks:
        path = obj.path / str(views[i].get("file") or layout.view_name(i))
        src = _img_src(path, report_dir, cfg)
        az = views[i].get("azimuth_deg")
        title = f"view {i}" + (f", azimuth {az:.0f}°" if isinstance(az, (int, float)) else "")
        imgs.append(f'<img src="{src}" alt="{_e(obj.uid)} {title}" title="{_e(title)}">' if src else "")
    badge = ""
    if sel is not None:
        kept = bool(sel.get("kept"))
        score = sel.get("score")
        score_txt = f" {score:.3f}" if isinstance(score, float) and math.isfinite(score) else ""
        label = "kept" if kept else f"dropped: {sel.get('reason') or 'unknown'}"
        badge = f' <span class="badge {"kept" if kept else "dropped"}">{_e(label)}{score_txt}</span>'
    facts = [
        f"{n} views",
        f"{meta.get('resolution')} px" if meta.get("resolution") else "",
        f"{meta.get('samples')} samples" if meta.get("samples") else "",
        f"HDRI {meta['hdri'].get('name')}" if isinstance(meta.get("hdri"), dict) else "",
    ]
    return (
        f'<div class="card"><div class="cap"><b>{_e(obj.uid)}</b>{badge}<br>{_e(obj.caption)}'
        f'<br><span class="facts">{_e(" · ".join(f for f in facts if f))}</span></div>'
        f'<div class="views">{"".join(imgs)}</div></div>'
    )


def _read_failures(root: Path) -> list[dict]:
    """Every failure record, read defensively (a hand-edited or truncated record still shows up)."""
    out = []
    for p in sorted((root / layout.FAILED_DIR).glob("*.json")):
        if ".tmp" in p.name:
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            rec = {"reason": "unreadable_record", "message": str(e)}
        rec = rec if isinstance(rec, dict) else {}
        out.append(
            {
                "uid": str(rec.get("uid") or p.stem),
                "reason": str(rec.get("reason") or "unknown"),
                "message": str(rec.get("message") or ""),
                "log_tail": str(rec.get("log_tail") or ""),
            }
        )
    return out


def _timings_table(objects: list[layout.RenderedObject]) -> str:
    """Mean, median, max and total of every numeric timing in meta.json, plus render seconds per view."""
    series: dict[str, list[float]] = {}
    for obj in objects:
        try:
            timings, views = obj.meta.get("timings") or {}, obj.num_views
        except (OSError, ValueError):
            continue
        for key, value in timings.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                series.setdefault(key, []).append(float(value))
        render_s = timings.get("render_s")
        if isinstance(render_s, (int, float)) and views:
            series.setdefault("render_s per view", []).append(float(render_s) / views)
    if not series:
        return '<p class="none">No timings recorded in meta.json.</p>'
    rows = [
        [
            k,
            len(v),
            f"{statistics.fmean(v):.3f}",
            f"{statistics.median(v):.3f}",
            f"{max(v):.3f}",
            f"{sum(v):.2f}",
        ]
        for k, v in sorted(series.items())
    ]
    return _table(["timing (s)", "objects", "mean", "median", "max", "total"], rows)


# --- filter -------------------------------------------------------------------------------------------------


def _filter_section(root: Path | None, report_dir: Path, cfg: ReportConfig) -> tuple[dict[str, dict], str]:
    """(uid -> selection row, HTML); an empty dict when there is no selection."""
    head = '<section id="filter"><h2>Filter</h2>'
    if root is None:
        return {}, head + '<p class="none">No filter output here (no filter/selection.parquet).</p></section>'
    if not (root / "selection.parquet").is_file():
        return (
            {},
            head
            + '<p class="none">filter/ has no selection.parquet (the filter has not finished).</p></section>',
        )
    try:
        rows = _read_parquet(root / "selection.parquet")
    except Exception as e:  # a broken parquet file must not take the whole report down
        return (
            {},
            head + f'<p class="none">filter/selection.parquet is unreadable: {_e(str(e))}</p></section>',
        )
    selection = {str(r["uid"]): r for r in rows if "uid" in r}
    kept = sum(1 for r in rows if r.get("kept"))
    threshold = next((r["threshold"] for r in rows if isinstance(r.get("threshold"), (int, float))), None)
    parts = [head, f"<p>Directory: <code>{_e(_rel(root, report_dir))}</code></p>"]
    thr_txt = (
        "not recorded"
        if threshold is None
        else ("+inf (keeps none)" if math.isinf(threshold) else f"{threshold:.4f}")
    )
    parts.append(
        _table(
            ["objects", "kept", "dropped", "threshold used"], [[len(rows), kept, len(rows) - kept, thr_txt]]
        )
    )
    reasons = Counter(str(r.get("reason") or "unknown") for r in rows if not r.get("kept"))
    if reasons:
        parts.append(
            _table(["drop reason", "objects"], sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        )

    # The histogram shows every stored aggregate score (scores.parquet keeps them before thresholding).
    scores: dict[str, float] = {}
    if (root / "scores.parquet").is_file():
        try:
            for r in _read_parquet(root / "scores.parquet"):
                if "uid" in r and isinstance(r.get("aggregate"), (int, float)):
                    scores[str(r["uid"])] = float(r["aggregate"])
        except Exception as e:
            parts.append(f'<p class="none">filter/scores.parquet is unreadable: {_e(str(e))}</p>')
    if not scores:
        scores = {
            u: float(r["score"]) for u, r in selection.items() if isinstance(r.get("score"), (int, float))
        }
    finite = {u: s for u, s in scores.items() if math.isfinite(s)}
    parts.append("<h3>Aggregate CLIP score</h3>")
    if finite:
        kept_flags = [bool(selection.get(u, {}).get("kept")) for u in finite]
        parts.append(histogram_svg(list(finite.values()), kept_flags, threshold, cfg.histogram_bins))
    else:
        parts.append('<p class="none">No finite scores to plot.</p>')
    parts.append(_config_details(root))
    if (root / REPORT).is_file():
        parts.append(
            f'<p>Full filter report: <a href="{_href(root / REPORT, report_dir)}">filter/report.html</a></p>'
        )
    parts.append("</section>")
    return selection, "\n".join(parts)


def histogram_bins(values: list[float], bins: int) -> tuple[float, float, list[int]]:
    """(low, high, bin index of each value): equal-width bins over [min, max], the last bin closed."""
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    return low, high, [min(int((v - low) / width), bins - 1) for v in values]


def histogram_svg(
    values: list[float],
    kept: list[bool],
    threshold: float | None,
    bins: int,
    width: int = 640,
    height: int = 180,
) -> str:
    """Stacked histogram (kept green over dropped grey) with the threshold as a red line; inline SVG.

    Each bar carries ``data-count``/``data-kept`` so tests can check the counts against numpy.
    """
    low, high, idx = histogram_bins(values, bins)
    total, kept_n = [0] * bins, [0] * bins
    for i, k in zip(idx, kept, strict=True):
        total[i] += 1
        kept_n[i] += int(k)
    pad_l, pad_b, plot_h = 36, 22, height - 30
    bar_w = (width - pad_l - 8) / bins
    scale = plot_h / max(max(total), 1)
    out = [
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg">'
    ]
    for b in range(bins):
        x = pad_l + b * bar_w
        h_all, h_kept = total[b] * scale, kept_n[b] * scale
        y0 = height - pad_b
        lo_b, hi_b = low + (high - low) * b / bins, low + (high - low) * (b + 1) / bins
        out.append(
            f'<rect class="bin" x="{x:.1f}" y="{y0 - h_all:.1f}" width="{bar_w - 1:.1f}" height="{h_all:.1f}" '
            f'fill="#9e9e9e" data-count="{total[b]}" data-kept="{kept_n[b]}">'
            f"<title>[{lo_b:.3f}, {hi_b:.3f}): {total[b]} objects, {kept_n[b]} kept</title></rect>"
        )
        if kept_n[b]:
            out.append(
                f'<rect x="{x:.1f}" y="{y0 - h_kept:.1f}" width="{bar_w - 1:.1f}" height="{h_kept:.1f}" fill="#43a047"/>'
            )
    out.append(
        f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - 8}" y2="{height - pad_b}" stroke="#333"/>'
    )
    out.append(f'<text x="{pad_l}" y="{height - 6}" font-size="11">{low:.3f}</text>')
    out.append(f'<text x="{width - 8}" y="{height - 6}" font-size="11" text-anchor="end">{high:.3f}</text>')
    out.append(f'<text x="4" y="14" font-size="11">{max(total)}</text>')
    if threshold is not None and math.isfinite(threshold) and low <= threshold <= high:
        tx = pad_l + (threshold - low) / (high - low) * (width - pad_l - 8)
        out.append(
            f'<line class="threshold" x1="{tx:.1f}" y1="4" x2="{tx:.1f}" y2="{height - pad_b}" stroke="#e53935" '
            f'stroke-width="2"><title>threshold {threshold:.4f}</title></line>'
        )
    out.append("</svg>")
    legend = '<p class="legend"><span style="color:#43a047">■</span> kept <span style="color:#9e9e9e">■</span> dropped'
    legend += ' <span style="color:#e53935">|</span> threshold</p>'
    return "".join(out) + legend


# --- shards -------------------------------------------------------------------------------------------------


def _shard_section(root: Path | None) -> str:
    head = '<section id="shards"><h2>Shards</h2>'
    if root is None:
        return head + '<p class="none">No shard output here (no shards/index.json).</p></section>'
    if not (root / "index.json").is_file():
        return head + '<p class="none">shards/ has no index.json (sharding has not finished).</p></section>'
    try:
        index = json.loads((root / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return head + f'<p class="none">shards/index.json is unreadable: {_e(str(e))}</p></section>'
    shards = (
        [s for s in (index.get("shards") or []) if isinstance(s, dict)] if isinstance(index, dict) else []
    )
    if not shards:
        return head + '<p class="none">index.json lists no shards.</p></section>'
    per_split: dict[str, list[int]] = {}
    for s in shards:
        acc = per_split.setdefault(str(s.get("split") or "?"), [0, 0, 0])
        acc[0] += 1
        acc[1] += _int(s.get("nsamples"))
        acc[2] += _int(s.get("bytes"))
    rows = [
        [split, n, samples, _human_bytes(size)] for split, (n, samples, size) in sorted(per_split.items())
    ]
    rows.append(
        [
            "all",
            len(shards),
            sum(r[1] for r in per_split.values()),
            _human_bytes(sum(r[2] for r in per_split.values())),
        ]
    )
    parts = [head, _table(["split", "shards", "samples", "bytes"], rows)]
    skipped = index.get("skipped") or []
    if isinstance(skipped, list) and skipped:
        parts.append(f"<p>{len(skipped)} objects skipped while sharding (see index.json).</p>")
    parts.append(
        _table(
            ["shard", "split", "samples", "bytes", "sha256"],
            [
                [
                    s.get("name", "?"),
                    s.get("split", "?"),
                    _int(s.get("nsamples")),
                    _human_bytes(_int(s.get("bytes"))),
                    str(s.get("sha256") or "")[:16],
                ]
                for s in shards
            ],
        )
    )
    parts.append("</section>")
    return "\n".join(parts)


# --- helpers ------------------------------------------------------------------------------------------------


# --- train + samples ----------------------------------------------------------------------------------------


def _train_section(train: Path, samples: Path, report_dir: Path, cfg: ReportConfig) -> str:
    """Loss curve summary from train/metrics.csv and the sampled views of samples/ (mvtrain fit / sample)."""
    head = '<section id="train"><h2>Training and sampling</h2>'
    parts = []
    metrics = train / "metrics.csv"
    if metrics.is_file():
        import csv

        rows = list(csv.DictReader(metrics.read_text(encoding="utf-8").splitlines()))
        table = [[r.get("step"), r.get("kind"), r.get("loss"), r.get("step_s")] for r in rows[-20:]]
        parts.append(f"<p>{len(rows)} logged steps in {_e(_rel(metrics, report_dir))} (last 20 shown).</p>")
        parts.append(_table(["step", "batch", "loss", "s/step"], table))
        parts.append(_config_details(train))
    else:
        parts.append('<p class="none">No training run here (no train/metrics.csv).</p>')
    grid = samples / "grid.png"
    if grid.is_file():
        meta = {}
        if (samples / "sample.json").is_file():
            meta = json.loads((samples / "sample.json").read_text(encoding="utf-8"))
        src = _img_src(grid, report_dir, cfg)
        c = meta.get("config", {})
        how = (
            f" ({c['scheduler']}, {c['steps']} steps, CFG {c['guidance_scale']})" if "scheduler" in c else ""
        )
        parts.append(f"<p>Sampled views for “{_e(meta.get('prompt', ''))}”{_e(how)}:</p>")
        if src:
            parts.append(
                f'<img class="grid" src="{src}" alt="sampled views" style="image-rendering: pixelated; height: 128px">'
            )
    else:
        parts.append('<p class="none">No samples here (no samples/grid.png).</p>')
    return head + "\n".join(parts) + "</section>"


# --- sds ----------------------------------------------------------------------------------------------------


def _sds_section(root: Path, report_dir: Path, cfg: ReportConfig) -> str:
    """Per `mvtrain sds` run under sds/ (design §2.6): summary, the turntable and the latest 4-view snapshot."""
    head = '<section id="sds"><h2>Text to 3D (SDS)</h2>'
    runs = sorted(p.parent for p in root.glob("*/summary.json")) if root.is_dir() else []
    if not runs:
        return head + '<p class="none">No SDS run here (no sds/*/summary.json).</p></section>'
    parts = []
    for run in runs:
        try:
            summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        parts.append(
            f"<h3>“{_e(summary.get('prompt', run.name))}”</h3><p>{_e(summary.get('steps'))} steps in "
            f"{_e(summary.get('seconds'))} s on {_e(summary.get('device'))} ({_e(summary.get('backend'))} hash grid), "
            f"peak memory {_e(summary.get('peak_memory_mb'))} MB. "
            f'<a href="{_href(run / "mesh.glb", report_dir)}">mesh.glb</a> · '
            f'<a href="{_href(run / "mesh.obj", report_dir)}">mesh.obj</a> · '
            f'<a href="{_href(run / "turntable.mp4", report_dir)}">turntable.mp4</a></p>'
        )
        gif = run / "turntable.gif"
        if gif.is_file():
            # the GIF itself (a thumbnail would drop the animation)
            src = (
                "data:image/gif;base64," + base64.b64encode(gif.read_bytes()).decode("ascii")
                if cfg.embed_images
                else _href(gif, report_dir)
            )
            parts.append(f'<img class="grid" src="{src}" alt="turntable" style="height: 160px">')
        snaps = sorted((run / "snapshots").glob("step-*.png"))
        if snaps:
            src = _img_src(snaps[-1], report_dir, dataclasses.replace(cfg, thumb_px=max(cfg.thumb_px, 512)))
            if src:
                parts.append(f"<p>Snapshot {_e(snaps[-1].stem)} (4 views, {len(snaps)} snapshots):</p>")
                parts.append(f'<img class="grid" src="{src}" alt="snapshot" style="height: 128px">')
        parts.append(_config_details(run))
    return head + "\n".join(parts) + "</section>"


def _config_details(stage_dir: Path) -> str:
    """The stage's resolved config.toml, folded away (what the outputs were made with, design §2)."""
    try:
        text = (stage_dir / "config.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    return _details("resolved config.toml", text)


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_jsonl(path: Path) -> list:
    from mvforge.fsutil import read_jsonl

    return read_jsonl(path)


def _img_src(path: Path, report_dir: Path, cfg: ReportConfig) -> str | None:
    """A relative URL of the image, or a base64 PNG thumbnail when embedding; None for a missing file."""
    if not path.is_file():
        return None
    if not cfg.embed_images:
        return _href(path, report_dir)
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((cfg.thumb_px, cfg.thumb_px))
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _href(path: Path, start: Path) -> str:
    return quote(_rel(path, start))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _details(summary: str, text: str) -> str:
    if not text.strip():
        return ""
    return f"<details><summary>{_e(summary)}</summary><pre>{_e(text[-4000:])}</pre></details>"


def _int(v: object) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _table(header: list[str], rows: list, raw_cols: set[int] = frozenset()) -> str:
    """An HTML table; cells are escaped except in ``raw_cols`` (pre-built HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if i in raw_cols else _e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str, cfg: ReportConfig) -> str:
    px = cfg.thumb_px
    css = f"""
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 13px; }}
th {{ background: #f3f3f3; }}
.card {{ display: flex; gap: 12px; align-items: center; border-bottom: 1px solid #eee; padding: 6px 0; }}
.cap {{ width: 260px; flex: none; font-size: 13px; }}
.facts {{ color: #777; font-size: 12px; }}
.views img {{ width: {px}px; height: {px}px; margin: 1px; image-rendering: auto;
  background: repeating-conic-gradient(#ddd 0% 25%, #fff 0% 50%) 50% / 16px 16px; }}
.badge {{ font-size: 11px; padding: 1px 5px; border-radius: 3px; color: #fff; }}
.badge.kept {{ background: #43a047; }} .badge.dropped {{ background: #9e9e9e; }}
.none {{ color: #888; font-style: italic; }}
pre {{ max-height: 240px; overflow: auto; font-size: 11px; }}
"""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{css}</style></head><body>\n{body}\n</body></html>\n"
    )
