"""`mvdata report`: the HTML names every object and failure, every link resolves, the histogram counts are right."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mvforge.formats import renders as layout
from mvforge.fsutil import atomic_write_json
from mvforge.report import ReportConfig, histogram_bins, write_report
from tests.fixtures.synthetic import write_synthetic_render_dir

MVDATA = Path(sys.executable).with_name("mvdata")


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.bins: list[tuple[int, int]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "rect" and "data-count" in a:
            self.bins.append((int(a["data-count"]), int(a["data-kept"])))


def _parse(html: str) -> _Links:
    p = _Links()
    p.feed(html)
    return p


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, list[str], np.ndarray]:
    """renders/ (4 synthetic objects + 2 failures), filter/ (scores + selection), shards/index.json."""
    renders = tmp_path / "renders"
    uids = write_synthetic_render_dir(renders, 4, views=6, resolution=16)
    atomic_write_json(
        layout.failure_path(renders, "broken-glb"),
        {
            "uid": "broken-glb",
            "status": "failed",
            "reason": "import_error",
            "message": "bad <magic>",
            "log_tail": "x",
        },
    )
    atomic_write_json(
        layout.failure_path(renders, "slow-one"), {"uid": "slow-one", "status": "failed", "reason": "timeout"}
    )
    # Timings as the runner writes them, so the timing summary has something to average.
    for i, uid in enumerate(uids):
        meta_path = layout.object_dir(renders, uid) / layout.META
        meta = json.loads(meta_path.read_text())
        meta["timings"] = {"render_s": 6.0 * (i + 1), "import_s": 0.5}
        atomic_write_json(meta_path, meta)
    (renders / "config.toml").write_text("resolution = 16\n")
    scores = np.array([0.31, 0.22, 0.27, float("nan")])
    (tmp_path / "filter").mkdir()
    pq.write_table(pa.table({"uid": uids, "aggregate": scores}), tmp_path / "filter" / "scores.parquet")
    pq.write_table(
        pa.table(
            {
                "uid": uids,
                "score": scores,
                "kept": [True, False, True, False],
                "reason": [None, "below_threshold", None, "empty_text"],
                "threshold": [0.25] * 4,
            }
        ),
        tmp_path / "filter" / "selection.parquet",
    )
    (tmp_path / "filter" / "report.html").write_text("<html></html>")
    atomic_write_json(
        tmp_path / "shards" / "index.json",
        {
            "shards": [
                {
                    "name": "train-000000.tar",
                    "split": "train",
                    "nsamples": 2,
                    "bytes": 20480,
                    "sha256": "ab" * 32,
                },
                {
                    "name": "train-000001.tar",
                    "split": "train",
                    "nsamples": 1,
                    "bytes": 10240,
                    "sha256": "cd" * 32,
                },
                {
                    "name": "val-000000.tar",
                    "split": "val",
                    "nsamples": 1,
                    "bytes": 10240,
                    "sha256": "ef" * 32,
                },
            ],
            "totals": {"shards": 3, "samples": 4, "bytes": 40960},
        },
    )
    return tmp_path, uids, scores


def test_report_names_everything_and_links_resolve(run_dir):
    root, uids, scores = run_dir
    out = write_report(root, ReportConfig(views_per_object=3))
    assert out == root / "report.html"
    html = out.read_text(encoding="utf-8")
    for uid in uids:
        assert uid in html
        assert layout.load_object(root / "renders", uid).caption in html
    for text in (
        "broken-glb",
        "import_error",
        "slow-one",
        "timeout",
        "bad &lt;magic&gt;",
        "below_threshold",
        "empty_text",
        "train-000001.tar",
        "val-000000.tar",
        "resolution = 16",
    ):
        assert text in html, text
    links = _parse(html)
    assert len(links.srcs) == 3 * len(uids)
    for ref in links.srcs + [h for h in links.hrefs if not h.startswith("#")]:
        assert (root / unquote(ref)).is_file(), ref
    assert "filter/report.html" in links.hrefs
    # Asking for more views than were rendered shows each view once.
    srcs = _parse(write_report(root, ReportConfig(views_per_object=50)).read_text()).srcs
    assert len(srcs) == len(set(srcs)) == 6 * len(uids)
    # Counts: 2 of 4 kept; shards 3 train samples in 2 shards, 1 val; render seconds per view 6/6 .. 24/6.
    assert re.search(r"<td>4</td><td>2</td><td>2</td><td>0.2500</td>", html)
    assert re.search(r"<td>train</td><td>2</td><td>3</td><td>30.7 KB</td>", html)
    assert re.search(r"<td>render_s per view</td><td>4</td><td>2.500</td>", html)


def test_histogram_matches_numpy(run_dir):
    root, uids, scores = run_dir
    html = write_report(root, ReportConfig(histogram_bins=5)).read_text()
    bins = _parse(html).bins
    finite = scores[np.isfinite(scores)]
    expected, _ = np.histogram(finite, bins=5, range=(finite.min(), finite.max()))
    assert [b[0] for b in bins] == expected.tolist()
    kept = np.array([True, False, True])
    expected_kept, _ = np.histogram(finite[kept], bins=5, range=(finite.min(), finite.max()))
    assert [b[1] for b in bins] == expected_kept.tolist()
    low, high, idx = histogram_bins([1.0, 1.0], 4)  # a single value still gets a finite range
    assert low < 1.0 < high and idx[0] == idx[1]


def test_embedded_thumbnails_are_pngs(run_dir):
    root, uids, _ = run_dir
    html = write_report(root, ReportConfig(views_per_object=2, embed_images=True, thumb_px=8)).read_text()
    srcs = _parse(html).srcs
    assert len(srcs) == 2 * len(uids)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.mode == "RGBA" and max(im.size) <= 8


def test_missing_stages_say_so(tmp_path):
    said = []
    html = write_report(tmp_path, say=said.append).read_text()
    for text in ("No render output here", "No filter output here", "No shard output here"):
        assert text in html
    assert "no eval/ in the run directory" in html
    assert any("nothing in" in line and "every section is empty" in line for line in said), said
    (tmp_path / "train").mkdir()  # a fit before its first checkpoint: its log is shown, so no such warning
    (tmp_path / "train" / "metrics.csv").write_text("step,kind,loss,step_s\n4,3d,0.25,1.0\n")
    said.clear()
    write_report(tmp_path, say=said.append)
    assert not any("every section is empty" in line for line in said), said
    (tmp_path / "train" / "metrics.csv").unlink()
    (tmp_path / "train").rmdir()
    (tmp_path / "filter").mkdir()
    (tmp_path / "shards").mkdir()
    html = write_report(tmp_path).read_text()
    assert "has no selection.parquet" in html and "has no index.json" in html
    # A render directory given directly is recognised as one.
    uids = write_synthetic_render_dir(tmp_path / "r", 1, views=2, resolution=8)
    assert uids[0] in write_report(tmp_path / "r").read_text()


def test_cli_writes_report_and_rejects_bad_input(run_dir):
    root, uids, _ = run_dir
    proc = subprocess.run(
        [str(MVDATA), "report", str(root), "--views-shown", "2", "--embed"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(root / "report.html")
    assert len(_parse((root / "report.html").read_text()).srcs) == 2 * len(uids)
    bad = subprocess.run([str(MVDATA), "report", str(root / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    bad_set = subprocess.run(
        [str(MVDATA), "report", str(root), "--set", "thumbs=3"], capture_output=True, text=True
    )
    assert bad_set.returncode == 2 and "unknown config key" in bad_set.stderr
    for args, said in (
        (["--views-shown", "0"], "--views-shown 0: views_per_object must be >= 1"),
        (["--set", "thumb_px=4"], "--set thumb_px 4: thumb_px must be >= 8"),
    ):
        bad_value = subprocess.run([str(MVDATA), "report", str(root), *args], capture_output=True, text=True)
        assert bad_value.returncode == 2 and said in bad_value.stderr, bad_value.stderr


def test_train_and_sample_section(tmp_path):
    html = write_report(tmp_path).read_text()
    assert "No training run here" in html and "No samples here" in html
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metrics.csv").write_text(
        "step,epoch,kind,loss,lr,grad_norm,step_s\n1,0,3d,0.9876,1e-4,1.0,0.5\n2,0,2d,0.5432,1e-4,1.0,0.4\n"
    )
    (tmp_path / "samples").mkdir()
    Image.new("RGB", (64, 16), (200, 10, 10)).save(tmp_path / "samples" / "grid.png")
    config = {"scheduler": "ddim", "steps": 10, "guidance_scale": 10.0}
    atomic_write_json(tmp_path / "samples" / "sample.json", {"prompt": "a red mug", "config": config})
    html = write_report(tmp_path).read_text()
    assert (
        "0.9876" in html and "0.5432" in html and "a red mug" in html and "ddim, 10 steps, CFG 10.0" in html
    )
    srcs = _parse(html).srcs
    assert any(
        (tmp_path / unquote(s)).resolve() == (tmp_path / "samples" / "grid.png").resolve() for s in srcs
    )
    # A damaged sample.json is a line in the section; the grid and the rest of the report stand.
    for damaged in ("{bad", "[1, 2]", '{"config": {"scheduler": "ddim"}}'):
        (tmp_path / "samples" / "sample.json").write_text(damaged)
        html = write_report(tmp_path).read_text()
        assert "sample.json is unreadable or damaged" in html and "0.9876" in html
        assert len(_parse(html).srcs) == len(srcs)


def test_markup_in_captions_and_records_is_escaped(tmp_path):
    """Markup lives in templates with autoescaping: text from files never becomes HTML."""
    from mvforge.formats import renders as fmt
    from tests.fixtures.synthetic import write_synthetic_object

    write_synthetic_object(tmp_path / "renders", "evil", "<script>alert(1)</script>", views=2, resolution=8)
    atomic_write_json(
        fmt.failure_path(tmp_path / "renders", "bad"),
        {
            "uid": "bad",
            "reason": "import_error",
            "message": "<img src=x onerror=alert(2)>",
            "log_tail": "</pre>",
        },
    )
    html = write_report(tmp_path).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;/pre&gt;" in html


def test_validation_strips_and_loss_curves(tmp_path):
    """A fit run's validation/step-*/ grids become one strip per prompt (oldest left), its metrics a curve
    per kind (docs/train.md)."""
    train = tmp_path / "train"
    train.mkdir()
    (train / "metrics.csv").write_text(
        "step,epoch,kind,loss\n1,0,3d,0.9\n2,0,2d,0.7\n3,0,3d,0.5\n4,0,3d,0.4\n"
    )
    html = write_report(tmp_path).read_text()
    # A matplotlib plot with axis labels, ticks and a legend entry per kind (was a bare polyline per kind).
    assert "No validation grids" in html and "optimizer step" in html and "loss (MSE" in html
    assert "3D batches" in html and "2D batches" in html and 'id="xtick_1"' in html
    for step in (2, 4):
        root = train / "validation" / f"step-{step:06d}"
        entries = [
            {"prompt": "a chair", "kind": "3d", "dir": "00-a-chair"},
            {"prompt": "a dog", "kind": "2d", "dir": "01-a-dog"},
        ]
        for e in entries:
            (root / e["dir"]).mkdir(parents=True)
            Image.new("RGB", (64, 16), (step * 40, 0, 0)).save(root / e["dir"] / "grid.png")
        atomic_write_json(
            root / "validation.json", {"step": step, "prompts": entries, "val_loss": 0.1 * step}
        )
    html = write_report(tmp_path).read_text()
    assert "steps 2, 4" in html and html.count('class="strip"') == 2
    assert "val split (held out)" in html  # validation.loss_batches: the held-out views' loss joins the plot
    srcs = [unquote(s) for s in _parse(html).srcs]
    chair = [s for s in srcs if "00-a-chair" in s]
    assert [Path(s).parts[-3] for s in chair] == ["step-000002", "step-000004"]
    assert all((tmp_path / s).is_file() for s in chair)


def test_dreambooth_section_sds_plot_every_snapshot_and_rounded_numbers(tmp_path):
    """Fails before: no DreamBooth section, the SDS section showed one snapshot and no loss curve, and losses
    printed with 16 digits."""
    db = tmp_path / "dreambooth"
    db.mkdir()
    (db / "metrics.csv").write_text(
        "step,loss,prior_loss,preservation,mean_abs_dev,max_abs_dev,lr,grad_norm,step_s\n"
        "1,0.123456789012345,0.0,0.0001,1e-06,1e-05,0.001,1.5,0.2\n"
        "2,0.0987654321,0.0,0.0002,2e-06,2e-05,0.001,1.4,0.2\n"
    )
    run = tmp_path / "sds" / "a-red-mug"
    (run / "snapshots").mkdir(parents=True)
    atomic_write_json(run / "summary.json", {"prompt": "a red mug", "steps": 4, "seconds": 1.0})
    (run / "metrics.csv").write_text(
        "step,loss,loss_sds,loss_orient\n1,2.5,2.4,0.1\n2,2.25,2.2,0.05\n3,2.0,1.9,0.1\n4,1.5,1.4,0.1\n"
    )
    for step in (2, 4, 6):
        Image.new("RGB", (64, 16), (step * 30, 0, 0)).save(run / "snapshots" / f"step-{step:06d}.png")
    html = write_report(tmp_path).read_text()
    section = html[html.index('<section id="dreambooth"') :]
    section = section[: section.index("</section>")]
    assert "subject loss 0.09877" in section and "0.0987654321" not in section
    assert "parameter drift" in section and "optimizer step" in section  # both plots, with axis labels
    sds = html[html.index('<section id="sds"') :]
    sds = sds[: sds.index("</section>")]
    assert [f"step {s}" for s in (2, 4, 6)] == [c for c in ("step 2", "step 4", "step 6") if c in sds]
    assert sds.count('alt="snapshot at step') == 3 and "SDS" in sds and "loss" in sds and "<svg" in sds


def test_the_report_bins_scores_as_the_filter_page_does(tmp_path):
    """Fails before: the run report used its own 20 bins, the filter's page its config's 40."""
    import pyarrow as pa
    import pyarrow.parquet as papq

    flt = tmp_path / "filter"
    flt.mkdir()
    n = 30
    table = pa.table(
        {
            "uid": [f"o{i}" for i in range(n)],
            "score": [0.2 + 0.003 * i for i in range(n)],
            "kept": [i >= 15 for i in range(n)],
            "reason": [None if i >= 15 else "below_threshold" for i in range(n)],
            "threshold": [0.245] * n,
        }
    )
    papq.write_table(table, flt / "selection.parquet")
    (flt / "config.toml").write_text("[report]\nhistogram_bins = 7\n")
    html = write_report(tmp_path).read_text()
    section = html[html.index('<section id="filter"') :]
    assert section[: section.index("</section>")].count('class="bin"') == 7
    assert write_report(tmp_path, ReportConfig(histogram_bins=5)).read_text().count('class="bin"') == 5


def test_stages_under_other_names_are_found_by_their_contents_or_given(run_dir, tmp_path_factory):
    """A run laid out as a user's cluster job writes it, not as `make demo` does: each stage is recognised by
    its contents; one kept outside the run is passed by flag; a flag that names no directory is one line."""
    import shutil

    root, uids, _ = run_dir
    for old, new in (("renders", "objaverse-r64"), ("filter", "clip-0.25"), ("shards", "wds")):
        (root / old).rename(root / new)
    db = root / "xjq-tune"
    db.mkdir()
    (db / "metrics.csv").write_text("step,loss,prior_loss,preservation,mean_abs_dev\n1,0.5,0.0,0.0,1e-06\n")
    for slug in ("a-red-mug", "a-blue-mug"):  # a `--prompts` batch: SDS checkpoints are files
        (root / "mugs" / slug / "checkpoints").mkdir(parents=True)
        (root / "mugs" / slug / "checkpoints" / "step-000004.pt").write_bytes(b"")
        atomic_write_json(root / "mugs" / slug / "summary.json", {"prompt": slug.replace("-", " ")})
    fit_run = root / "b-fit"  # a fit run: checkpoints are directories
    (fit_run / "checkpoints" / "step-000004").mkdir(parents=True)
    (fit_run / "metrics.csv").write_text("step,kind,loss,step_s\n4,3d,0.25,1.0\n")
    said = []
    html = write_report(root, say=said.append).read_text()
    section = {
        name: html[html.index(f'<section id="{name}"') :].split("</section>")[0]
        for name in ("renders", "train", "sds", "dreambooth")
    }
    assert all(uid in html for uid in uids) and "import_error" in html  # renders/ and its failures
    assert "below_threshold" in html and "train-000001.tar" in html  # the filter's selection, the shards
    assert "subject loss 0.5" in section["dreambooth"]
    assert "a red mug" in section["sds"] and "a blue mug" in section["sds"] and "b-fit" not in section["sds"]
    assert "0.25" in section["train"] and "mug" not in section["train"]
    assert any("train: " in line and "b-fit (found by its contents" in line for line in said), said
    # A folder under a stage's name that holds something else is shown, and said to be suspect.
    (root / "samples").mkdir()
    (root / "samples" / "notes.txt").write_text("not a sample")
    said.clear()
    write_report(root, say=said.append)
    assert any("samples does not look like `samples` output" in line for line in said), said
    # `make demo`'s eval/ holds a known-answer evaluation only: that is `eval` output too.
    (root / "eval").mkdir()
    atomic_write_json(root / "eval" / "known_answer.json", {"captions": []})
    said.clear()
    write_report(root, say=said.append)
    assert not any("eval does not look like" in line for line in said), said  # it did before
    assert not any("every section is empty" in line for line in said), said
    # A damaged or unreadable known-answer result is shown as such; the rest of the report stands.
    for damaged in ("{not json", json.dumps({"captions": [], "summary": {"captions": 0}}), "[1, 2]"):
        (root / "eval" / "known_answer.json").write_text(damaged)
        html = write_report(root).read_text()
        section = html[html.index('<section id="known-answer"') :].split("</section>")[0]
        assert "known_answer.json is unreadable or damaged" in section and all(uid in html for uid in uids)
    shutil.rmtree(root / "eval")
    # An eval directory given elsewhere is named as given, not as the run's eval/.
    other = tmp_path_factory.mktemp("elsewhere") / "ka"
    other.mkdir()
    said.clear()
    html = write_report(root, stages={"eval": other, "samples": other}, say=said.append).read_text()
    assert f"no eval.json in {os.path.relpath(other, root)}" in html and "no eval/ in" not in html
    assert any("--stage eval and --stage samples name the same directory" in line for line in said), said
    # A `--prompts` batch reported on its own: every prompt, none taken for a fit run.
    html = write_report(root / "mugs").read_text()
    assert "a red mug" in html and "a blue mug" in html and "No training run here" in html

    elsewhere = tmp_path_factory.mktemp("cluster-disk") / "renders-v2"
    shutil.move(root / "objaverse-r64", elsewhere)
    assert "No render output here" in write_report(root).read_text()
    proc = subprocess.run(
        [str(MVDATA), "report", str(root), "--stage", f"renders={elsewhere}"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    html = (root / "report.html").read_text()
    assert all(uid in html for uid in uids)
    for src in _parse(html).srcs:  # links from the report to renders outside the run resolve
        assert (root / unquote(src)).resolve().is_file(), src
    for stage, said in (
        (f"train={root / 'nope'}", "not a directory"),
        ("train", "write STAGE=DIR"),
        ("trains=x", "unknown stage 'trains'"),
    ):
        bad = subprocess.run(
            [str(MVDATA), "report", str(root), "--stage", stage], capture_output=True, text=True
        )
        assert bad.returncode == 2 and said in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_a_run_directory_that_is_missing_or_a_file_is_one_line_naming_which(tmp_path):
    from mvforge.errors import UserError

    with pytest.raises(UserError, match=r"nope does not exist; pass the --out directory"):
        write_report(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"notes.txt is a file; pass the --out directory"):
        write_report(tmp_path / "notes.txt")
    # Every stage given with --stage: the run directory is only where the page goes, so it is made.
    with pytest.raises(UserError, match=r"--stage renders=.*nowhere: not a directory"):
        write_report(tmp_path / "new" / "job7", stages={"renders": tmp_path / "nowhere"})
    assert not (tmp_path / "new").exists()
    (tmp_path / "r").mkdir()
    assert write_report(tmp_path / "new" / "job7", stages={"renders": tmp_path / "r"}).is_file()
