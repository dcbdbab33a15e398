"""`mvdata report DIR`: one HTML page summarising whatever stages have run in a run directory.

Reads the on-disk contracts only (docs/design.md §2): ``renders/`` (§2.1: contact sheet of each ok object's views
with its caption, failures by reason code, render timings), ``filter/`` (§2.2: kept/dropped counts, the threshold
used, a histogram of the aggregate CLIP score as inline SVG) and ``shards/`` (§2.3: shards, samples and bytes per
split from index.json), and the model wing's outputs (fit, sds, dreambooth, eval, known answer) through the names of
mvforge/formats/ (runs, samples, sds_result, eval_result). A stage that has not run, or left nothing readable, gets
a line saying so: the report is useful after any prefix of the pipeline and never fails because a later stage is
missing. A stage is found under its name (``renders/``, ``train/``: the layout of `make demo`), else as a
subdirectory whose contents are that stage's output (``find_stages``), else where the caller points
(`mvdata report RUN --stage renders=/data/renders --stage train=runs/mvdream`).

Images are relative links from report.html (the run directory stays self-contained and the page small), or,
with ``embed_images``, small base64 PNG thumbnails so the single file can be mailed around.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mvforge import htmlkit
from mvforge.errors import UserError
from mvforge.formats import eval_result
from mvforge.formats import renders as layout
from mvforge.formats import runs as run_format
from mvforge.formats import samples as sample_format
from mvforge.formats import sds_result as sds_format
from mvforge.formats import selection as selection_format
from mvforge.formats import shards as shard_format
from mvforge.fsutil import atomic_write_text, is_tmp

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
    histogram_bins: int = 0
    """Bins of the CLIP score histogram; 0: those of the filter's own report.html (its config.toml), else 20."""
    max_failures: int = 500
    """At most this many rows in the failures table; the reason counts always cover every failure."""


def _metrics_header(d: Path) -> list[str]:
    try:
        with (d / run_format.METRICS).open(encoding="utf-8") as f:
            return f.readline().strip().split(",")
    except OSError:
        return []


def _is_sds_run(d: Path) -> bool:
    """An `mvtrain sds` run (fit and DreamBooth runs also end with summary.json): its own files."""
    names = (sds_format.SNAPSHOTS, sds_format.MESH_GLB, sds_format.TURNTABLE_GIF, sds_format.PREVIEW)
    return any((d / n).exists() for n in names) or any((d / run_format.CHECKPOINTS).glob("*.pt"))


# How each stage's output is recognised by its contents (the on-disk contracts of mvforge/formats/), for a run
# laid out under other names than the demo's. DreamBooth's metrics carry the drift from the base model; an SDS
# run's checkpoints are files, a fit run's directories.
STAGE_MARKERS = {
    "renders": layout.is_render_dir,
    "filter": lambda d: (d / selection_format.SELECTION).is_file(),
    "shards": lambda d: (d / shard_format.INDEX).is_file(),
    "train": lambda d: (
        (d / run_format.CHECKPOINTS).is_dir()
        and not _is_sds_run(d)
        and "mean_abs_dev" not in _metrics_header(d)
    ),
    "samples": lambda d: (d / sample_format.GRID).is_file() and (d / sample_format.META).is_file(),
    "sds": lambda d: any(_is_sds_run(r) for r in sds_format.find_results(d)),
    "dreambooth": lambda d: "mean_abs_dev" in _metrics_header(d),
    "eval": lambda d: any(
        (d / name).is_file() for name in (eval_result.EVAL, eval_result.SDS, eval_result.KNOWN_ANSWER)
    ),
}
"""The stages `mvdata report` shows, in pipeline order, each with the test that recognises its output."""


def _given_stages(given: dict[str, Path | None] | None) -> dict[str, Path]:
    """The ``--stage`` paths given, each checked to be a directory (UserError naming the flag otherwise)."""
    given = {k: Path(v) for k, v in (given or {}).items() if v is not None}
    for stage, path in given.items():
        if not path.is_dir():
            raise UserError(f"--stage {stage}={path}: not a directory; pass the directory that stage wrote")
    return given


def find_stages(
    run_dir: Path, given: dict[str, Path | None] | None = None, say=None
) -> dict[str, Path | None]:
    """Where each stage of ``STAGE_MARKERS`` wrote, for the report: the path ``given`` for it; else
    ``run_dir/<stage>`` (the layout of `make demo`); else the child of ``run_dir`` whose contents are that
    stage's output (the first by name when several are, each named through ``say``); else ``run_dir`` itself
    when it is (``mvdata report renders/``); else None. A child found for one stage is not taken for
    another. SDS runs are found as a whole: ``run_dir`` when runs sit directly in it (a `--prompts` batch), else
    the child that holds them. ``say(line)`` (e.g. print to stderr) hears each stage found by its contents and
    each given path that does not look like its stage. Raises UserError for a given path that is not a
    directory."""
    say = say or (lambda line: None)
    given = _given_stages(given)
    for stage, path in given.items():
        if not STAGE_MARKERS[stage](path):
            say(
                f"mvdata report: --stage {stage}={path} does not look like `{stage}` output; its section may "
                "be empty"
            )
    by_path: dict[Path, str] = {}
    for stage, path in given.items():
        other = by_path.setdefault(path.resolve(), stage)
        if other != stage:
            say(f"mvdata report: --stage {other} and --stage {stage} name the same directory {path}")
    children = sorted(p for p in run_dir.iterdir() if p.is_dir()) if run_dir.is_dir() else []
    taken = {p.resolve() for p in given.values()}
    taken |= {(run_dir / s).resolve() for s in STAGE_MARKERS if (run_dir / s).is_dir()}
    found: dict[str, Path | None] = {}
    for stage, looks_right in STAGE_MARKERS.items():
        if stage in given:
            found[stage] = given[stage]
            continue
        if (run_dir / stage).is_dir():
            found[stage] = run_dir / stage
            if any((run_dir / stage).iterdir()) and not looks_right(run_dir / stage):  # empty: not run yet
                say(
                    f"mvdata report: {run_dir / stage} does not look like `{stage}` output; pass the right "
                    f"directory with --stage {stage}=DIR"
                )
            continue
        if stage == "sds":
            found[stage] = _sds_root(run_dir, taken)
        else:
            matches = [c for c in children if looks_right(c)]
            free = [c for c in matches if c.resolve() not in taken]
            found[stage] = free[0] if free else (run_dir if not matches and looks_right(run_dir) else None)
            if len(free) > 1:
                others = ", ".join(c.name for c in free[1:])
                say(
                    f"mvdata report: {stage}: several directories qualify; showing {free[0].name} (not {others})"
                )
        chosen = found[stage]
        if chosen is not None and chosen != run_dir:
            taken.add(chosen.resolve())
            say(
                f"mvdata report: {stage}: {chosen} (found by its contents; --stage {stage}=DIR names another)"
            )
    return found


def _sds_root(run_dir: Path, taken: set[Path]) -> Path | None:
    """Where the report looks for SDS runs when ``run_dir`` has no ``sds/`` (``find_stages``)."""
    runs = [r for r in sds_format.find_results(run_dir) if _is_sds_run(r) and r.resolve() not in taken]
    runs = [r for r in runs if not any(t in r.resolve().parents for t in taken)]
    if not runs:
        return None
    if any(r == run_dir or r.parent == run_dir for r in runs):
        return run_dir
    return runs[0].parent


def write_report(
    run_dir: Path,
    cfg: ReportConfig | None = None,
    stages: dict[str, Path | None] | None = None,
    say=None,
    known_answer: Sequence[Path] = (),
) -> Path:
    """Write ``run_dir``/report.html from the stage outputs ``find_stages`` finds (``stages``: a path per stage
    name of ``STAGE_MARKERS`` where the run keeps it elsewhere; ``say``: hears how each was found); return its
    path. ``known_answer``: `mvtrain eval --known-answer` outputs kept outside ``run_dir``, shown beside those
    under it (the ``eval`` stage is one directory; a run has several: sampled views, SDS meshes, DreamBooth).
    A missing ``run_dir`` is made when ``stages`` are given (it is then only where the page goes). Raises
    UserError for a missing ``run_dir`` without them, bad settings, an unknown stage, a given stage path that is
    not a directory or a ``known_answer`` directory without known_answer.json, each before anything is
    written."""
    cfg = cfg or ReportConfig()
    run_dir = Path(run_dir)
    for extra in map(Path, known_answer):
        if not (extra / eval_result.KNOWN_ANSWER).is_file():
            if not extra.exists():
                what = "does not exist"
            elif not extra.is_dir():
                what = "is a file"
            else:
                what = f"holds no {eval_result.KNOWN_ANSWER}"
            raise UserError(f"--known-answer {extra} {what}; pass the --out of `mvtrain eval --known-answer`")
    unknown = sorted(set(stages or {}) - set(STAGE_MARKERS))
    if unknown:
        raise UserError(f"unknown stage {unknown[0]!r}; the stages are {', '.join(STAGE_MARKERS)}")
    for name, value, low, flag in (
        ("views_per_object", cfg.views_per_object, 1, "--views-shown"),
        ("thumb_px", cfg.thumb_px, 8, "--set thumb_px"),
        ("histogram_bins", cfg.histogram_bins, 0, "--set histogram_bins"),
        ("max_objects", cfg.max_objects, 0, "--set max_objects"),
        ("max_failures", cfg.max_failures, 0, "--set max_failures"),
    ):
        if value < low:
            raise UserError(f"{flag} {value}: {name} must be >= {low}")
    if not run_dir.exists() and (_given_stages(stages) or known_answer):
        try:  # the stages given elsewhere: run_dir is only where the page goes
            run_dir.mkdir(parents=True)
        except FileNotFoundError as e:  # a place that takes no new directories (/proc)
            raise UserError(
                f"cannot create {e.filename or run_dir} ({e.strerror}); pass another RUN_DIR"
            ) from None
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise UserError(
            f"run directory {run_dir} {what}; pass the --out directory of a run (or --stage STAGE=DIR)"
        )
    out = run_dir / REPORT
    at = find_stages(run_dir, stages, say)
    if all(path is None for path in at.values()) and not known_answer:
        (say or (lambda line: None))(
            f"mvdata report: nothing in {run_dir} looks like any stage's output, so every section is empty; "
            "pass the --out directory of a run, or --stage STAGE=DIR (or --known-answer DIR)"
        )
    missing = run_dir / "-"  # a path that holds nothing: the section says the stage has not run

    # One section per stage, each its own template (mvforge/templates/report_*.html.j2), in pipeline order.
    selection, filter_html = _filter_section(at["filter"], run_dir, cfg)
    sections = [
        ("renders", "renders", _render_section(at["renders"], run_dir, cfg, selection)),
        ("filter", "filter", filter_html),
        ("shards", "shards", _shard_section(at["shards"])),
        ("train", "train", _train_section(at["train"] or missing, at["samples"] or missing, run_dir, cfg)),
        ("sds", "sds", _sds_section(at["sds"] or missing, run_dir, cfg)),
        ("dreambooth", "dreambooth", _dreambooth_section(at["dreambooth"] or missing, run_dir, cfg)),
        ("eval", "eval", _eval_section(at["eval"] or missing, run_dir, cfg)),
        ("known-answer", "known answer", _known_answer_section(run_dir, cfg, [at["eval"], *known_answer])),
    ]
    name = run_dir.resolve().name
    page = htmlkit.render(
        "page.html.j2",
        title=f"mvforge report: {name}",
        heading=f"mvforge run report: {name}",
        nav=[(sid, label) for sid, label, _ in sections],
        sections=[html for _, _, html in sections],
        thumb_px=cfg.thumb_px,
    )
    try:
        atomic_write_text(out, page)
    except FileNotFoundError as e:  # a directory that takes no new files (/proc/sys)
        raise UserError(f"cannot write {out} ({e.strerror}); pass another RUN_DIR") from None
    return out


# --- renders ------------------------------------------------------------------------------------------------


def _render_section(
    root: Path | None, report_dir: Path, cfg: ReportConfig, selection: dict[str, dict]
) -> str:
    if root is None:
        return htmlkit.render("report_renders.html.j2", root=None)
    objects = list(layout.iter_objects(root))
    failures = _read_failures(root)
    manifest = [r for r in _read_jsonl(root / layout.MANIFEST) if isinstance(r, dict)]
    counts = Counter(f["reason"] for f in failures)
    return htmlkit.render(
        "report_renders.html.j2",
        root=_rel(root, report_dir),
        n_ok=len(objects),
        manifest_lines=len(manifest) if manifest else "none",
        cards=[
            _object_card(obj, report_dir, cfg, selection.get(obj.uid)) for obj in objects[: cfg.max_objects]
        ],
        more_objects=max(0, len(objects) - cfg.max_objects),
        failures=failures,
        max_failures=cfg.max_failures,
        reason_counts=sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
        timings=_timings_rows(objects),
        config=_config_text(root),
    )


def _object_card(obj: layout.RenderedObject, report_dir: Path, cfg: ReportConfig, sel: dict | None) -> dict:
    try:
        meta, views = obj.meta, obj.cameras.get("views", [])
    except (OSError, ValueError) as e:
        return {"uid": obj.uid, "error": str(e)}
    n = len(views)
    k = min(cfg.views_per_object, n)
    picks = sorted({int(i * n / k) for i in range(k)})
    shown = []
    for i in picks:
        path = obj.path / str(views[i].get("file") or layout.view_name(i))
        az = views[i].get("azimuth_deg")
        title = f"view {i}" + (f", azimuth {az:.0f}°" if isinstance(az, (int, float)) else "")
        shown.append({"src": _img_src(path, report_dir, cfg), "title": title})
    badge = None
    if sel is not None:
        kept = bool(sel.get("kept"))
        score = sel.get("score")
        score_txt = f" {score:.3f}" if isinstance(score, float) and math.isfinite(score) else ""
        label = "kept" if kept else f"dropped: {sel.get('reason') or 'unknown'}"
        badge = {"cls": "kept" if kept else "dropped", "label": label + score_txt}
    facts = [
        f"{n} views",
        f"{meta.get('resolution')} px" if meta.get("resolution") else "",
        f"{meta.get('samples')} samples" if meta.get("samples") else "",
        f"HDRI {meta['hdri'].get('name')}" if isinstance(meta.get("hdri"), dict) else "",
        "sun lamps" if isinstance(meta.get("lamps"), dict) else "",
    ]
    return {
        "uid": obj.uid,
        "error": None,
        "badge": badge,
        "caption": obj.caption,
        "facts": " · ".join(f for f in facts if f),
        "views": shown,
    }


def _read_failures(root: Path) -> list[dict]:
    """Every failure record, read defensively (a hand-edited or truncated record still shows up)."""
    out = []
    for p in sorted((root / layout.FAILED_DIR).glob("*.json")):
        if is_tmp(p):
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


def _timings_rows(objects: list[layout.RenderedObject]) -> list[list]:
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
    return [
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


# --- filter -------------------------------------------------------------------------------------------------


def _filter_section(root: Path | None, report_dir: Path, cfg: ReportConfig) -> tuple[dict[str, dict], str]:
    """(uid -> selection row, HTML); an empty dict when there is no selection."""
    tpl = "report_filter.html.j2"
    if root is None:
        return {}, htmlkit.render(
            tpl, problem="No filter output here (no filter/selection.parquet; elsewhere: --stage filter=DIR)."
        )
    if not (root / selection_format.SELECTION).is_file():
        return {}, htmlkit.render(
            tpl, problem=f"{root.name}/ has no selection.parquet (the filter has not finished)."
        )
    try:
        rows = _read_parquet(root / selection_format.SELECTION)
    except Exception as e:  # a broken parquet file must not take the whole report down
        return {}, htmlkit.render(tpl, problem=f"filter/selection.parquet is unreadable: {e}")
    selection = {str(r["uid"]): r for r in rows if "uid" in r}
    kept = sum(1 for r in rows if r.get("kept"))
    threshold = next((r["threshold"] for r in rows if isinstance(r.get("threshold"), (int, float))), None)
    thr_txt = (
        "not recorded"
        if threshold is None
        else ("+inf (keeps none)" if math.isinf(threshold) else f"{threshold:.4f}")
    )
    reasons = Counter(str(r.get("reason") or "unknown") for r in rows if not r.get("kept"))

    # The histogram shows every stored aggregate score (scores.parquet keeps them before thresholding).
    scores: dict[str, float] = {}
    scores_problem = None
    if (root / selection_format.SCORES).is_file():
        try:
            for r in _read_parquet(root / selection_format.SCORES):
                if "uid" in r and isinstance(r.get("aggregate"), (int, float)):
                    scores[str(r["uid"])] = float(r["aggregate"])
        except Exception as e:
            scores_problem = f"filter/scores.parquet is unreadable: {e}"
    if not scores:
        scores = {
            u: float(r["score"]) for u, r in selection.items() if isinstance(r.get("score"), (int, float))
        }
    uids = list(scores)
    histogram = htmlkit.histogram_svg(
        [scores[u] for u in uids],
        cfg.histogram_bins or _filter_bins(root, 20),
        kept=[bool(selection.get(u, {}).get("kept")) for u in uids],
        threshold=threshold,
    )
    full = (
        _href(root / selection_format.REPORT, report_dir)
        if (root / selection_format.REPORT).is_file()
        else None
    )
    html = htmlkit.render(
        tpl,
        problem=None,
        root=_rel(root, report_dir),
        n=len(rows),
        kept=kept,
        threshold=thr_txt,
        reasons=sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])),
        scores_problem=scores_problem,
        histogram=histogram,
        config=_config_text(root),
        full_report=full,
    )
    return selection, html


def _filter_bins(root: Path, default: int) -> int:
    """The filter run's own ``report.histogram_bins`` (its config.toml), so this page bins the scores as the
    filter's report.html does; ``default`` when it is not recorded."""
    import tomllib

    try:
        bins = tomllib.loads(_config_text(root)).get("report", {}).get("histogram_bins")
    except tomllib.TOMLDecodeError:
        return default
    return bins if isinstance(bins, int) and bins >= 1 else default


# histogram_bins stays importable from here (tests and callers of the earlier API).
histogram_bins = htmlkit.histogram_bins


# --- shards -------------------------------------------------------------------------------------------------


def _shard_section(root: Path | None) -> str:
    tpl = "report_shards.html.j2"
    if root is None:
        return htmlkit.render(
            tpl, problem="No shard output here (no shards/index.json; elsewhere: --stage shards=DIR)."
        )
    if not (root / shard_format.INDEX).is_file():
        return htmlkit.render(tpl, problem=f"{root.name}/ has no index.json (sharding has not finished).")
    try:
        index = shard_format.parse_index(
            (root / shard_format.INDEX).read_bytes(), "shards/index.json", strict=False
        )
    except (OSError, UserError) as e:
        return htmlkit.render(tpl, problem=f"shards/index.json is unreadable: {e}")
    shards = [s for s in (index.get("shards") or []) if isinstance(s, dict)]
    if not shards:
        return htmlkit.render(tpl, problem="index.json lists no shards.")
    per_split: dict[str, list[int]] = {}
    for s in shards:
        acc = per_split.setdefault(str(s.get("split") or "?"), [0, 0, 0])
        acc[0] += 1
        acc[1] += _int(s.get("nsamples"))
        acc[2] += _int(s.get("bytes"))
    splits = [
        [split, n, samples, _human_bytes(size)] for split, (n, samples, size) in sorted(per_split.items())
    ]
    splits.append(
        [
            "all",
            len(shards),
            sum(r[1] for r in per_split.values()),
            _human_bytes(sum(r[2] for r in per_split.values())),
        ]
    )
    skipped = index.get("skipped") or []
    rows = [
        [
            s.get("name", "?"),
            s.get("split", "?"),
            _int(s.get("nsamples")),
            _human_bytes(_int(s.get("bytes"))),
            str(s.get("sha256") or "")[:16],
        ]
        for s in shards
    ]
    return htmlkit.render(
        tpl,
        problem=None,
        splits=splits,
        skipped=len(skipped) if isinstance(skipped, list) else 0,
        shards=rows,
    )


# --- helpers ------------------------------------------------------------------------------------------------


# --- train + samples ----------------------------------------------------------------------------------------


def _train_section(train: Path, samples: Path, report_dir: Path, cfg: ReportConfig) -> str:
    """Loss curve summary from train/metrics.csv and the sampled views of samples/ (mvtrain fit / sample)."""
    metrics = None
    if (train / run_format.METRICS).is_file():
        import csv

        path = train / run_format.METRICS
        rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
        metrics = {
            "count": len(rows),
            "path": _rel(path, report_dir),
            "rows": [
                [r.get("step"), r.get("kind"), _num(r.get("loss")), _num(r.get("step_s"), 3)]
                for r in rows[-20:]
            ],
            "config": _config_text(train),
        }
    sample = None
    if (samples / sample_format.GRID).is_file():
        meta, problem = {}, ""
        try:
            meta = json.loads((samples / sample_format.META).read_text(encoding="utf-8"))
            c = meta.get("config", {})
            how = (
                f"{c['scheduler']}, {c['steps']} steps, CFG {c['guidance_scale']}" if "scheduler" in c else ""
            )
            prompt = str(meta.get("prompt", ""))
        except FileNotFoundError:
            how, prompt = "", ""
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
            # A damaged record is said; the grid and the rest of the report stand.
            how, prompt = "", ""
            problem = f"{samples / sample_format.META} is unreadable or damaged ({e!r})"
        sample = {
            "prompt": prompt,
            "how": how,
            "problem": problem,
            "src": _img_src(samples / sample_format.GRID, report_dir, cfg),
        }
    html = htmlkit.render("report_train.html.j2", metrics=metrics, sample=sample)
    if metrics is not None:
        html += _validation_section(train, rows, report_dir, cfg)
    return html


_CURVE_COLORS = {"3d": "#1e88e5", "2d": "#fb8c00"}


def _loss_curves(rows: list[dict], width: int = 640, height: int = 160) -> dict | None:
    """Polyline points of the loss per kind (3D/2D) from metrics.csv rows; None without finite losses."""
    pts = []
    for r in rows:
        try:
            pts.append((int(r["step"]), float(r["loss"]), r.get("kind", "3d")))
        except (KeyError, TypeError, ValueError):
            continue
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
        return None
    first, last = min(p[0] for p in pts), max(p[0] for p in pts)
    low, high = min(p[1] for p in pts), max(p[1] for p in pts)
    sx = (width - 20) / max(last - first, 1)
    sy = (height - 20) / max(high - low, 1e-12)
    series = [
        {
            "kind": kind,
            "color": color,
            "points": [(10 + (s - first) * sx, height - 10 - (v - low) * sy) for s, v, k in pts if k == kind],
        }
        for kind, color in _CURVE_COLORS.items()
    ]
    series = [s for s in series if s["points"]]
    return {
        "width": width,
        "height": height,
        "series": series,
        "low": low,
        "high": high,
        "first": first,
        "last": last,
    }


def _validation_section(train: Path, rows: list[dict], report_dir: Path, cfg: ReportConfig) -> str:
    """Loss curves and, per validation prompt, a strip of its grids over steps (train/validation/,
    docs/design.md §2.5)."""
    steps, strips = _strips(train / sample_format.VALIDATION, report_dir, cfg)
    losses = [(kind, [r for r in rows if r.get("kind", "3d") == kind]) for kind in _CURVE_COLORS]
    series = [
        (f"{kind.upper()} batches", [r.get("step") for r in part], [r.get("loss") for r in part])
        for kind, part in losses
    ]
    val = _val_losses(train / sample_format.VALIDATION)
    if val[0]:  # validation.loss_batches: the loss on the held-out views
        series.append(("val split (held out)", *val))
    plot = _plot(series, "loss (MSE of the noise prediction)")
    return htmlkit.render(
        "report_validation.html.j2",
        plot=plot,
        curves=None if plot else _loss_curves(rows),
        strips=strips,
        steps=steps,
    )


def _plot(series, ylabel: str, xlabel: str = "optimizer step", log_y: bool = False):
    """A matplotlib line plot as safe inline SVG (``mvforge.plots``), or None without matplotlib / data."""
    from markupsafe import Markup

    from mvforge.plots import line_plot_svg

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    clean = [(label, [num(x) for x in xs], [num(y) for y in ys]) for label, xs, ys in series]
    svg = line_plot_svg(clean, xlabel, ylabel, log_y=log_y)
    return None if svg is None else Markup(svg)


def _num(v, digits: int = 4) -> str:
    """A metrics cell rounded to ``digits`` significant digits (a CSV holds float64 reprs); text as it is."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "" if v is None else str(v)
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


def _metrics_rows(run: Path) -> list[dict]:
    """Rows of a run's metrics.csv (``mvforge.metrics``); none when it is missing or unreadable."""
    from mvforge.metrics import CSV, read_rows

    try:
        return read_rows(run / CSV) if (run / CSV).is_file() else []
    except (OSError, ValueError):
        return []


def _val_losses(root: Path) -> tuple[list[int], list[float]]:
    """(steps, val_loss) of the validations in a validation/ directory that computed one."""
    points = []
    for meta_file in sorted(root.glob(f"step-*/{sample_format.VALIDATION_INDEX}")) if root.is_dir() else []:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if "val_loss" in meta and not is_tmp(meta_file.parent.name):
            points.append((meta["step"], meta["val_loss"]))
    return [p[0] for p in points], [p[1] for p in points]


def _strips(root: Path, report_dir: Path, cfg: ReportConfig) -> tuple[list[int], list[dict]]:
    """(steps, one strip per validation prompt) of a validation/ directory (fit and dreambooth layout)."""
    steps, strips = [], {}
    for d in sorted(root.glob("step-*")) if root.is_dir() else []:
        meta_file = d / sample_format.VALIDATION_INDEX
        if is_tmp(d.name) or not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        steps.append(meta["step"])
        for e in meta["prompts"]:
            strip = strips.setdefault(e["dir"], {"prompt": e["prompt"], "kind": e["kind"], "cells": []})
            strip["cells"].append(
                {"step": meta["step"], "src": _img_src(d / e["dir"] / sample_format.GRID, report_dir, cfg)}
            )
    return steps, list(strips.values())


# --- dreambooth ---------------------------------------------------------------------------------------------


def _dreambooth_section(root: Path, report_dir: Path, cfg: ReportConfig) -> str:
    """`mvtrain dreambooth` (docs/dreambooth.md): losses and the drift from the base model over steps, the
    validation grids (subject and class prompt), and samples of the result (``dreambooth-samples/``)."""
    rows = _metrics_rows(root) if root.is_dir() else []
    if not rows:
        return htmlkit.render("report_dreambooth.html.j2", run=None)
    steps = [r.get("step") for r in rows]
    losses = [("subject loss", steps, [r.get("loss") for r in rows])]
    if any(isinstance(r.get("prior_loss"), float) and r["prior_loss"] > 0 for r in rows):
        losses.append(("class (prior) loss", steps, [r.get("prior_loss") for r in rows]))
    drift = [
        ("mean |θ − θ0|", steps, [r.get("mean_abs_dev") for r in rows]),
        ("max |θ − θ0|", steps, [r.get("max_abs_dev") for r in rows]),
    ]
    last = rows[-1]
    val_steps, strips = _strips(root / sample_format.VALIDATION, report_dir, cfg)
    samples = root.parent / "dreambooth-samples" / sample_format.GRID
    run = {
        "path": _rel(root, report_dir),
        "count": len(rows),
        "last": {
            k: _num(last.get(k)) for k in ("step", "loss", "prior_loss", "preservation", "mean_abs_dev")
        },
        "loss_plot": _plot(losses, "loss (MSE of the noise prediction)"),
        "drift_plot": _plot(drift, "parameter drift", log_y=True),
        "steps": val_steps,
        "strips": strips,
        "samples": _img_src(samples, report_dir, cfg) if samples.is_file() else None,
        "config": _config_text(root),
    }
    return htmlkit.render("report_dreambooth.html.j2", run=run)


# --- sds ----------------------------------------------------------------------------------------------------


def _sds_section(root: Path, report_dir: Path, cfg: ReportConfig) -> str:
    """Per `mvtrain sds` run under sds/ (docs/design.md §2.6): summary, loss curve, turntable and every 4-view
    snapshot. sds/ may be one run, a parent of runs (``sds/<name>/``, the demo's) or a `--prompts` batch
    (``<slug>/``, ``seed-S/<slug>/``), also one level down (``sds/<batch>/<slug>/``)."""
    found = sds_format.find_results(root) if root.is_dir() else []
    items = []
    for run in found:
        try:
            summary = json.loads((run / sds_format.SUMMARY).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        gif = run / sds_format.TURNTABLE_GIF
        turntable = None
        if gif.is_file():
            # the GIF itself, never a thumbnail (a PNG thumbnail would drop the animation)
            turntable = (
                "data:image/gif;base64," + base64.b64encode(gif.read_bytes()).decode("ascii")
                if cfg.embed_images
                else _href(gif, report_dir)
            )
        big = dataclasses.replace(cfg, thumb_px=max(cfg.thumb_px, 512))
        snapshots = [
            {"src": src, "step": sds_format.snapshot_step(p)}
            for p in sds_format.snapshots(run)
            if not is_tmp(p.name) and (src := _img_src(p, report_dir, big))
        ]
        rows = _metrics_rows(run)
        steps = [r.get("step") for r in rows]
        plot = _plot(
            [
                ("total", steps, [r.get("loss") for r in rows]),
                ("SDS", steps, [r.get("loss_sds") for r in rows]),
            ],
            "loss",
        )
        items.append(
            {
                "prompt": summary.get("prompt", run.name),
                "summary": summary,
                "mesh_glb": _href(run / sds_format.MESH_GLB, report_dir),
                "mesh_obj": _href(run / sds_format.MESH_OBJ, report_dir),
                "mp4": _href(run / sds_format.TURNTABLE_MP4, report_dir),
                "turntable": turntable,
                "snapshots": snapshots,
                "plot": plot,
                "config": _config_text(run),
            }
        )
    return htmlkit.render("report_sds.html.j2", runs=items)


# --- eval ---------------------------------------------------------------------------------------------------


def _pm(block: dict | None, digits: int = 2) -> str:
    """ "mean ± std" of a MeanStd dict from eval.json; "" when absent."""
    if not block or block.get("mean") is None:
        return ""
    return f"{block['mean']:.{digits}f} ± {block['std']:.{digits}f}"


def _eval_section(root: Path, report_dir: Path, cfg: ReportConfig) -> str:
    """Table 1-shaped summary of eval/eval.json (`mvtrain eval`, MVDream §5.1), grids, SDS rows, the paper's
    figures behind the caveat that they are not comparable (docs/design.md §10.11)."""
    from mvforge.eval.paper import CAVEAT, PAPER_TABLE1

    path = root / eval_result.EVAL
    sds_path = root / eval_result.SDS
    if not path.is_file() and not sds_path.is_file():
        if not root.is_dir():
            problem = "No evaluation here (no eval/ in the run directory; elsewhere: --stage eval=DIR)."
        elif (root / eval_result.KNOWN_ANSWER).is_file():
            problem = (
                f"No FID / IS / CLIP evaluation here (no {eval_result.EVAL} in {_where(root, report_dir)}; a "
                "known-answer evaluation is shown below; elsewhere: --stage eval=DIR)."
            )
        else:
            problem = f"No evaluation here (no {eval_result.EVAL} in {_where(root, report_dir)})."
        return htmlkit.render("report_eval.html.j2", problem=problem)
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        sds = json.loads(sds_path.read_text(encoding="utf-8")) if sds_path.is_file() else {}
    except (OSError, ValueError) as e:
        return htmlkit.render("report_eval.html.j2", problem=f"eval output unreadable: {e}")
    metrics = doc.get("metrics", {})
    rows = []
    ref = metrics.get("reference")
    if ref:
        rows.append(
            [
                f"reference renders ({ref['images']} images)",
                "",
                _pm(ref.get("inception_score")),
                _pm(ref.get("clip_score", {}).get("over_images")),
                "",
                _pm(ref.get("consistency")),
            ]
        )
    gen = metrics.get("generated")
    if gen:
        kid = gen.get("kid") or {}
        kid_text = ""
        if kid:  # one subset = every image once: no spread to show
            value = f"{kid['mean']:.5f}" if kid.get("n") == 1 else _pm(kid, 5)
            kid_text = f"{value} (N {gen['images']}, subset {kid.get('subset_size')})"
        rows.append(
            [
                f"generated ({gen['images']} images)",
                f"{gen['fid']:.2f}" if gen.get("fid") is not None else "",
                _pm(gen.get("inception_score")),
                _pm(gen.get("clip_score", {}).get("over_images"))
                + f" (per prompt {_pm(gen.get('clip_score', {}).get('over_prompts'))})",
                kid_text,
                _pm(gen.get("consistency")),
            ]
        )
    timing = ""
    if (root / eval_result.TIMING).is_file():
        t = json.loads((root / eval_result.TIMING).read_text(encoding="utf-8"))
        gen_s = t.get("generation_s_per_prompt")
        timing = (
            f"generation {gen_s:.2f} s/prompt over {t['prompts_generated']} prompts this run, "
            if gen_s is not None
            else "nothing generated this run, "
        ) + f"scoring {t['scoring_s_per_prompt']:.2f} s/prompt"
    prep = doc.get("preparation", {})
    prompts = doc.get("prompts", {})
    return htmlkit.render(
        "report_eval.html.j2",
        problem=None,
        n_prompts=prompts.get("count", 0),
        source=prompts.get("source", ""),
        views=doc.get("views_per_prompt", ""),
        model=doc.get("model", ""),
        reference=doc.get("reference", ""),
        background=tuple(prep.get("background_rgb", ())),
        image_size=prep.get("image_size", ""),
        resize=prep.get("resize", ""),
        features=doc.get("extractors", {}).get("features", ""),
        clip=doc.get("extractors", {}).get("clip", "") or sds.get("clip", ""),
        rows=rows,
        timing=timing,
        grid=_img_src(root / eval_result.GRID_GENERATED, report_dir, cfg),
        ref_grid=_img_src(root / eval_result.GRID_REFERENCE, report_dir, cfg),
        sds=[
            [
                r["prompt"],
                f"{r['views']} ({r['source']})",
                _pm(r["clip_score"]),
                f"{r['consistency']:.2f}" if r["consistency"] is not None else "",
            ]
            for r in sds.get("results", [])
        ],
        caveat=CAVEAT,
        paper=[list(r) for r in PAPER_TABLE1],
    )


# --- known answer -------------------------------------------------------------------------------------------

_KNOWN_ANSWER_TITLES = {
    "sampled": "views sampled at the ground-truth cameras",
    "renders": "results rendered back at the ground-truth cameras",
}


def _known_answer_section(run_dir: Path, cfg: ReportConfig, eval_dirs: Sequence[Path | None] = ()) -> str:
    """Every ``*/known_answer.json`` under the run and in ``eval_dirs`` (`mvtrain eval --known-answer`,
    docs/demo.md), each once: per caption the ground truth beside what was generated, the numbers, and for
    rendered-back results (SDS meshes) the ground-truth turntable beside the result's."""
    blocks = []
    paths = {p.resolve(): p for p in run_dir.glob(f"*/{eval_result.KNOWN_ANSWER}")}
    for eval_dir in eval_dirs:
        if eval_dir is not None and (Path(eval_dir) / eval_result.KNOWN_ANSWER).is_file():
            path = Path(eval_dir) / eval_result.KNOWN_ANSWER
            paths.setdefault(path.resolve(), path)
    ordered = sorted(paths.values())
    for path in ordered:
        try:
            blocks.append(
                _known_answer_block(path, json.loads(path.read_text(encoding="utf-8")), run_dir, cfg)
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # A damaged result is shown as such; the rest of the report stands.
            blocks.append({"name": path.parent.name, "problem": f"{path} is unreadable or damaged ({e!r})"})
    names = Counter(b["name"] for b in blocks)
    for block, path in zip(blocks, ordered, strict=True):
        if names[block["name"]] > 1:  # two results in folders of the same name: tell them apart by their path
            block["name"] = str(path.parent)
    return htmlkit.render("report_known_answer.html.j2", blocks=blocks)


def _known_answer_block(path: Path, doc: dict, run_dir: Path, cfg: ReportConfig) -> dict:
    """One known_answer.json (``doc``, read from ``path``) as the template's block. Raises KeyError, TypeError or
    AttributeError for a document that is not a known-answer result."""
    summary = doc["summary"]
    mode = doc.get("mode", "sampled")
    needed = ("retrieved_own", "captions", "mean_iou", "mean_psnr_object_db")
    absent = [
        k for k in needed + (("blank_image_retrieves_own",) if mode == "sampled" else ()) if k not in summary
    ]
    if absent:  # the template prints each
        raise KeyError(f"summary.{absent[0]}")
    rows = []
    for r in doc["captions"]:
        shifted = r.get("shifted", {})
        if mode == "renders":
            shift_text = ", ".join(
                f"{k}°: {v['iou']:.2f} (truth {v['truth_iou']:.2f})" for k, v in shifted.items()
            )
        else:
            shift_text = ", ".join(
                f"{k}°: {v['views_nearer_at_true_camera']}/{len(r['views'])}" for k, v in shifted.items()
            )
        row = {
            "uid": r["uid"],
            "caption": r["caption"],
            "ok": r["retrieved"] == r["uid"],
            "retrieved": r["retrieved"],
            "iou": f"{r['iou']:.2f}",
            "iou_others": "" if r.get("iou_others") is None else f"{r['iou_others']:.2f}",
            "baseline_iou": "" if r.get("baseline_iou") is None else f"{r['baseline_iou']:.2f}",
            "psnr": _num(r.get("psnr_object_db"), 3),
            "shifted": shift_text,
            # Per view: a caption can retrieve its object on the mean of its views while most views do not.
            "views_own": (
                f"{r['views_retrieved'].count(r['uid'])}/{len(r['views_retrieved'])}"
                if r.get("views_retrieved")
                else ""
            ),
            "strip": _img_src(eval_result.known_answer_strip(path.parent, r["uid"]), run_dir, cfg),
            "turntables": None,
        }
        if mode == "renders":
            row["turntables"] = [
                _orbit_gif(_local(doc.get("reference"), run_dir), r["uid"], doc["config"]),
                _orbit_gif(_local(doc.get("generated"), run_dir), r["uid"], doc["config"]),
            ]
        rows.append(row)
    return {
        "name": path.parent.name,
        "title": _KNOWN_ANSWER_TITLES.get(mode, mode),
        "mode": mode,
        # As the table: IoU to 2 decimals, PSNR to 3 significant digits (the file keeps 4 decimals).
        "summary": {
            **summary,
            "mean_iou": f"{float(summary['mean_iou']):.2f}",
            "mean_psnr_object_db": _num(summary["mean_psnr_object_db"], 3),
        },
        "shifted": eval_result.shifted_text(summary),
        "model": doc.get("model") or doc.get("generated", ""),
        "cameras": _known_answer_cameras(doc),
        "rows": rows,
    }


def _known_answer_cameras(doc: dict) -> str:
    """Which of the reference's cameras a known-answer result was scored at (its ``orbit`` and ``view_offset``):
    a held-out orbit is the one that shows generalization (docs/demo.md)."""
    config = doc.get("config", {})
    if doc.get("mode", "sampled") != "sampled" or "orbit" not in config:
        return ""
    return (
        f"scored at orbit {config['orbit']} of the reference renders, {config.get('num_views', 4)} views from "
        f"view {config.get('view_offset', 0)} of that orbit"
    )


def _local(path: str | None, run_dir: Path) -> Path | None:
    """A directory a result names: as written, else the folder of that name in the run (a moved run)."""
    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        return p
    return run_dir / p.name if (run_dir / p.name).is_dir() else None


def _orbit_gif(renders: Path | None, uid: str, ka_config: dict) -> str | None:
    """A data-URI GIF of the first orbit's views of ``uid`` in a render directory, composited on the known
    answer's grey: the turntable at the cameras the model saw."""
    from PIL import Image

    if renders is None:
        return None
    try:
        obj = layout.load_object(renders, uid)
        views = sorted(
            (v for v in obj.cameras["views"] if int(v.get("orbit", 0)) == 0), key=lambda v: v["azimuth_deg"]
        )
        grey = int(ka_config.get("background_grey", 128))
        frames = []
        for v in views:
            with Image.open(obj.view_path(int(v["index"]))) as im:
                rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (grey, grey, grey, 255))
            frames.append(Image.alpha_composite(bg, rgba).convert("RGB"))
    except (OSError, ValueError, KeyError, UserError):
        return None
    if not frames:
        return None
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=150, loop=0)
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _config_text(stage_dir: Path) -> str:
    """The stage's resolved config.toml (what the outputs were made with, docs/design.md §2); "" when
    unreadable."""
    try:
        return (stage_dir / "config.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


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
            return htmlkit.thumbnail_uri(im, cfg.thumb_px)
    except OSError:
        return None


def _where(path: Path, run_dir: Path) -> str:
    """``path`` as a section names it: relative to the run directory, or "the run directory" itself."""
    return "the run directory" if path.resolve() == run_dir.resolve() else _rel(path, run_dir)


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _href(path: Path, start: Path) -> str:
    return quote(_rel(path, start))


def _int(v: object) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else 0


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
