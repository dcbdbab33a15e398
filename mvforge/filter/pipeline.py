"""`mvdata filter`: score the objects of a render directory, then select, report and record (docs/design.md
§2.2, §4).

```
filter/parts/part-<run>-<seq>.parquet   scored batches grouped (run.objects_per_part), renamed into place whole
filter/scores.parquet                   all rows, one per uid, merged from the parts; + aggregate and gates
filter/selection.parquet                uid, score, kept, reason when dropped, threshold used
filter/report.html                      histogram, counts, contact sheets
filter/scoring.json                     the scoring key (model, weights, text, views) every score was made with
filter/config.toml                      the resolved config
filter/summary.json                     written LAST: counts, threshold, timings, versions ("done" marker)
```

Resume: the uids present in scores.parquet or any part are skipped. Parts are written by this driver (not
by Ray's ``write_parquet``, which appends new files beside old ones on every run) with unique names, each
renamed into place whole, and merged by uid into scores.parquet, so a SIGKILL at any point leaves at most
whole parts and a re-run never duplicates a row. When every object is already scored the model is not even
loaded: a new threshold re-selects from the stored scores.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mvforge import rundir
from mvforge.config import to_toml
from mvforge.errors import UserError
from mvforge.filter.config import FilterConfig, scoring_key, scoring_key_hash, validate
from mvforge.formats import renders as layout
from mvforge.formats.selection import CONFIG, PARTS, REPORT, SCORES, SCORING_KEY, SELECTION, SUMMARY  # noqa: E402
from mvforge.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, is_tmp, versions

# --- parquet files ------------------------------------------------------------------------------------------------


def write_parquet_atomic(table, path: Path, metadata: dict | None = None) -> None:
    import pyarrow.parquet as pq

    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


class PartWriter:
    """Groups scored batches into parquet parts of about ``objects_per_part`` rows (or whatever arrived within
    ``flush_s`` seconds), each written whole under a unique name: the resume journal.

    One part per Ray batch would mean ~50K small files at Objaverse scale; a part per few thousand
    objects keeps the directory small while a kill loses at most ``flush_s`` seconds of scoring.
    """

    def __init__(self, out: Path, run_id: str, objects_per_part: int, flush_s: float):
        self.out, self.run_id = out, run_id
        self.objects_per_part, self.flush_s = objects_per_part, flush_s
        self.pending: list = []
        self.rows = 0
        self.written = 0
        self.last_flush = time.monotonic()

    def add(self, table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= self.objects_per_part or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.pending:
            path = self.out / PARTS / f"part-{self.run_id}-{self.written:06d}.parquet"
            write_parquet_atomic(pa.concat_tables(self.pending), path)
            self.written += 1
        self.pending, self.rows, self.last_flush = [], 0, time.monotonic()


def part_files(out: Path) -> list[Path]:
    """Finished parts only: a writer killed mid-write leaves a ``.tmp-<pid>`` sibling, never a short part."""
    return sorted(p for p in (out / PARTS).glob("part-*.parquet") if not is_tmp(p))


def load_scored(out: Path):
    """All stored score rows (scores.parquet + parts), one per uid (the first stored wins), as a Table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mvforge.filter.clip import SCORE_SCHEMA, conform

    tables = []
    if (out / SCORES).is_file():
        tables.append(conform(pq.read_table(out / SCORES), str(out / SCORES)))
    tables += [conform(pq.read_table(p), str(p)) for p in part_files(out)]
    if not tables:
        return SCORE_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    seen: set[str] = set()
    keep = []
    for i, uid in enumerate(table.column("uid").to_pylist()):
        if uid not in seen:
            seen.add(uid)
            keep.append(i)
    return table.take(pa.array(keep, type=pa.int64()))


def check_scoring_key(out: Path, cfg: FilterConfig, rescore: bool) -> None:
    """One filter directory, one scoring key: mixing scores of two models would make thresholds meaningless."""
    key = scoring_key(cfg)
    path = out / SCORING_KEY
    # Only stored scores bind the directory: a run that failed before scoring (a wrong --clip-pretrained) leaves
    # its key behind, and the corrected command must not be refused for it.
    has_scores = (out / SCORES).is_file() or bool(part_files(out))
    # The scoring key is the filter's content settings (docs/design.md §5): the selection settings re-apply to
    # stored scores on every run, so only the key is compared, by the comparison every stage shares.
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    rundir.check_resume(
        stored.get("key", {}) if isinstance(stored, dict) else None,
        key,
        "mvdata filter",
        out,
        kept=has_scores,
        made="holds scores made",
        fix="pass the same model flags to re-select from them, another --out, or --rescore to discard them",
        replace=rescore,
    )
    if rescore:
        for p in [*part_files(out), out / SCORES]:
            p.unlink(missing_ok=True)
    atomic_write_json(path, {"hash": scoring_key_hash(key), "key": key})


# --- engines: both yield pyarrow Tables of score rows -------------------------------------------------------------


def score_local(root: Path, uids: list[str], cfg: FilterConfig) -> Iterator:
    """In-process: one Scorer in this process, ``objects_per_batch`` objects per call (tests, small runs)."""
    from mvforge.filter.clip import Scorer

    scorer = Scorer(str(root), cfg, device=cfg.model.device)
    step = cfg.run.objects_per_batch
    for s in range(0, len(uids), step):
        yield scorer({"uid": uids[s : s + step]})


def score_ray(root: Path, uids: list[str], cfg: FilterConfig, address: str | None) -> Iterator:
    """Ray Data: one row per object (its uid), an actor pool of Scorers each loading the model once."""
    import ray
    from ray.data import ActorPoolStrategy

    from mvforge.filter.clip import Scorer
    from mvforge.raytools import init_ray

    r = cfg.run
    device = "cuda" if r.gpus_per_worker > 0 else "cpu"
    init_ray(address)
    # Our own bar counts objects; Ray Data's per-operator bars would interleave with it on stderr.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines and "bars disabled" notice
    ds = ray.data.from_items([{"uid": u} for u in uids])
    ds = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"root": str(root), "cfg": cfg, "device": device, "threads": r.cpus_per_worker},
        batch_size=r.objects_per_batch,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=r.workers),
        num_cpus=r.cpus_per_worker,
        num_gpus=r.gpus_per_worker or None,
    )
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as e:  # a UserError raised in an actor (bad weights) reaches the user as one line
        cause = e
        while cause is not None and not isinstance(cause, UserError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise


def check_device(cfg: FilterConfig) -> None:
    """Half precision only on a GPU; the Ray engine gets a GPU only through --gpus-per-worker."""
    m, r = cfg.model, cfg.run
    if r.engine == "ray":
        if m.device == "cuda" and r.gpus_per_worker <= 0:
            raise UserError("--device cuda with the Ray engine needs --gpus-per-worker > 0")
        on_gpu = r.gpus_per_worker > 0
    else:
        from mvforge.devices import resolve_device

        on_gpu = resolve_device(m.device).type == "cuda"
    if m.precision != "fp32" and not on_gpu:
        raise UserError(f"--precision {m.precision} needs a GPU; use --precision fp32 on CPU")


# --- the stage -------------------------------------------------------------------------------------------------------


@rundir.locked("mvdata filter", lambda out, **_: out)
def run_filter(
    renders: str | Path,
    out: str | Path,
    cfg: FilterConfig,
    *,
    address: str | None = None,
    rescore: bool = False,
    progress: bool = True,
) -> dict:
    """Score what is not yet scored, merge, select, report; returns the summary (also in summary.json)."""
    t0 = time.monotonic()
    validate(cfg)
    root, out = Path(renders), Path(out)
    uids = _finished_uids(root)
    _prepare_out(out, cfg, rescore)

    # 1. Score the objects that have no stored row.
    scored = _score_new(root, out, uids, cfg, address, progress)

    # 2. Merge parts into scores.parquet (one row per uid), then drop the merged parts.
    scores = _merge(out, uids, cfg)

    # 3. Select from the stored scores, report, and mark the run done.
    selection, threshold = _select_and_report(out, root, scores, cfg)
    summary = _summary(uids, scored, scores, selection, threshold, cfg, t0)
    atomic_write_json(out / SUMMARY, summary)
    if progress:
        _print_summary(summary, threshold, out)
    return summary


@dataclass(frozen=True)
class _Scored:
    """What step 1 did in this run."""

    todo: list[str]
    """The uids it scored (those without a stored row)."""
    images: int
    """Views scored (one CLIP cosine each)."""
    seconds: float
    """Wall time of scoring, in seconds (near 0 when ``todo`` is empty)."""


def _finished_uids(root: Path) -> list[str]:
    """The uids of the finished objects of the render directory ``root``; UserError when it has none (naming
    the failed ones and the render command to run)."""
    uids = list(layout.iter_uids(root))
    if not uids:
        failed = sum(1 for _ in (root / layout.FAILED_DIR).glob("*.json"))
        retry = " --retry-failed" if failed else ""
        raise UserError(
            f"render directory {root} has no finished objects ({failed} failed); "
            f"run `mvdata render --out {root}{retry}` first"
        )
    return uids


def _prepare_out(out: Path, cfg: FilterConfig, rescore: bool) -> None:
    """Make ``out`` ready for this run: refuse a render directory or another scoring key, drop the old
    summary.json ("done" marker) and torn part files, write config.toml."""
    layout.check_not_render_dir(out, "mvdata filter")
    out.mkdir(parents=True, exist_ok=True)
    check_scoring_key(out, cfg, rescore)
    (out / SUMMARY).unlink(missing_ok=True)  # this run is not done until it writes a new one
    for stale in (out / PARTS).glob("*.tmp-*"):
        stale.unlink(missing_ok=True)  # torn writes of a killed run
    atomic_write_text(out / CONFIG, to_toml(cfg))


def _score_new(
    root: Path, out: Path, uids: list[str], cfg: FilterConfig, address: str | None, progress: bool
) -> _Scored:
    """Score the objects of ``uids`` that have no row in ``out`` yet into new parts (``_score_into_parts``);
    the model is not loaded when there are none."""
    from mvforge.filter.clip import model_spec

    done = set(load_scored(out).column("uid").to_pylist())
    todo = [u for u in uids if u not in done]
    images = 0
    t_score = time.monotonic()
    if todo:
        check_device(cfg)
        # A bad --clip-model/--clip-pretrained fails here, as one line, before Ray or weights load.
        model_spec(cfg)
        images = _score_into_parts(root, out, todo, cfg, address, progress)
    return _Scored(todo, images, time.monotonic() - t_score)


def _score_into_parts(
    root: Path, out: Path, todo: list[str], cfg: FilterConfig, address: str | None, progress: bool
) -> int:
    """Score ``todo`` (in-process or on Ray, ``cfg.run.engine``) under a progress bar counting each object's
    reason, writing the rows as parts of this run; returns the number of views scored."""
    from mvforge.filter.clip import SCORE_SCHEMA
    from mvforge.progress import StageProgress

    batches = score_ray(root, todo, cfg, address) if cfg.run.engine == "ray" else score_local(root, todo, cfg)
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    parts = PartWriter(out, run_id, cfg.run.objects_per_part, cfg.run.part_flush_s)
    images = 0
    with StageProgress("filter", total=len(todo), enabled=progress) as bar:
        for table in batches:
            table = table.cast(SCORE_SCHEMA)
            parts.add(table)
            images += sum(len(c) for c in table.column("cosines").to_pylist())
            for reason in table.column("reason").to_pylist():
                bar.advance(reason or "ok")
        parts.flush()
    return images


def _merge(out: Path, uids: list[str], cfg: FilterConfig):
    """The stored rows of ``uids`` (sorted by uid) with aggregate and gates (``annotate``), as a DataFrame,
    written to scores.parquet; the merged parts are then deleted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mvforge.filter.select import annotate

    merged = load_scored(out)
    merged = merged.filter(pc.is_in(merged.column("uid"), value_set=pa.array(uids))).sort_by("uid")
    scores = annotate(merged.to_pandas(), cfg)
    write_parquet_atomic(pa.Table.from_pandas(scores, preserve_index=False), out / SCORES)
    for p in part_files(out):
        p.unlink(missing_ok=True)
    return scores


def _mode(cfg: FilterConfig) -> str:
    """How the threshold is chosen: ``clip_threshold`` (given) or ``keep_fraction`` (a quantile)."""
    return "clip_threshold" if cfg.select.clip_threshold is not None else "keep_fraction"


def _select_and_report(out: Path, root: Path, scores, cfg: FilterConfig) -> tuple:
    """Select from ``scores``, write selection.parquet (threshold, mode and aggregation in its metadata) and
    report.html; returns (the selection DataFrame, the threshold, inf when nothing is kept)."""
    import pyarrow as pa

    from mvforge.filter.report import write_report
    from mvforge.filter.select import select

    selection, threshold = select(scores, cfg)
    write_parquet_atomic(
        pa.Table.from_pandas(selection, preserve_index=False),
        out / SELECTION,
        metadata={"threshold": threshold, "mode": _mode(cfg), "agg": cfg.select.agg},
    )
    write_report(out / REPORT, root, scores, selection, threshold, cfg)
    return selection, threshold


def _summary(
    uids: list[str], scored: _Scored, scores, selection, threshold: float, cfg: FilterConfig, t0: float
) -> dict:
    """The summary.json document: counts, threshold, timings (seconds since ``t0`` for the wall) and versions."""
    dropped = Counter(r for r in selection["reason"] if r)
    t_score, images = scored.seconds, scored.images
    return {
        "objects": len(uids),
        "scored_this_run": len(scored.todo),
        "scorable": int(scores["aggregate"].notna().sum()),
        "kept": int(selection["kept"].sum()),
        "dropped": dict(sorted(dropped.items())),
        "threshold": threshold if threshold != float("inf") else None,
        "mode": _mode(cfg),
        "agg": cfg.select.agg,
        "engine": cfg.run.engine,
        "score_seconds": round(t_score, 3),
        "wall_seconds": round(time.monotonic() - t0, 3),
        "images_scored_this_run": images,
        "images_per_second": round(images / t_score, 2) if scored.todo and t_score > 0 else None,
        "versions": versions("torch", "open_clip_torch", "ray", "bpy"),
    }


def _print_summary(summary: dict, threshold: float, out: Path) -> None:
    """The closing table of ``summary`` (``threshold`` as selected, inf printed as such)."""
    from mvforge.progress import print_summary

    rows = [
        ("objects", summary["objects"]),
        ("scored this run", summary["scored_this_run"]),
        ("kept", summary["kept"]),
        *[(f"dropped: {k}", v) for k, v in summary["dropped"].items()],
        (f"threshold ({summary['mode']})", f"{threshold:.4f}"),
        ("wall", f"{summary['wall_seconds']:.1f} s"),
        ("report", str(out / REPORT)),
    ]
    print_summary("mvdata filter", rows)
