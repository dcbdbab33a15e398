"""Known-answer scores (mvforge/eval/known_answer.py) on references whose answer is known by construction: a
reference scored against itself, cameras turned about Z compared with the camera convention's own orbit."""

from __future__ import annotations

import numpy as np
import pytest

from mvforge import cameras
from mvforge.errors import UserError
from mvforge.eval.known_answer import (
    KnownAnswerConfig,
    eval_views,
    iou,
    load_references,
    rotate_azimuth,
    score_images,
    score_renders,
    silhouette,
    views_summary,
)


def test_rotating_about_z_moves_the_camera_along_its_orbit():
    c2w = np.stack([cameras.orbit_c2w(20.0, a, 1.7) for a in (0.0, 90.0, 200.0)])
    for shift in (90.0, 180.0, -30.0):
        want = np.stack([cameras.orbit_c2w(20.0, a + shift, 1.7) for a in (0.0, 90.0, 200.0)])
        np.testing.assert_allclose(rotate_azimuth(c2w, shift), want, atol=1e-9)


def test_eval_views_are_a_quarter_orbit_apart_on_the_first_orbit():
    views = [{"index": i, "orbit": i // 16} for i in range(32)]
    assert eval_views({"views": views}, 4) == [0, 4, 8, 12]
    with pytest.raises(UserError, match="multiple of 3"):
        eval_views({"views": views}, 3)
    # Views held out of training by `mvdata shard --val-views`: a set within an orbit, or a whole orbit.
    assert eval_views({"views": views}, 4, offset=2) == [2, 6, 10, 14]
    assert eval_views({"views": views}, 4, orbit=1) == [16, 20, 24, 28]
    with pytest.raises(UserError, match="view_offset=0..3"):
        eval_views({"views": views}, 4, offset=4)
    with pytest.raises(
        UserError, match=r"orbit 2: the references have orbits \[0, 1\]; pass --set orbit=0..1"
    ):
        eval_views({"views": views}, 4, orbit=2)


@pytest.fixture
def shared_reference(reference_dir, tmp_path):
    """The synthetic references with one camera set for all (as `mvdata render --shared-cameras` writes)."""
    import shutil

    root = tmp_path / "shared"
    shutil.copytree(reference_dir, root)
    cams = sorted(root.rglob("cameras.json"))
    for c in cams[1:]:
        c.write_bytes(cams[0].read_bytes())
    return root


def test_references_from_per_object_cameras_are_refused(reference_dir):
    with pytest.raises(UserError, match="--shared-cameras"):
        load_references(reference_dir, KnownAnswerConfig())


def test_each_reference_retrieves_itself_with_full_iou(shared_reference):
    cfg = KnownAnswerConfig()
    refs = load_references(shared_reference, cfg)
    assert len(refs) == 3 and refs[0].rgb.shape == (4, 32, 32, 3)
    for truth in refs:
        s = score_images(truth.rgb, truth, refs, cfg)
        assert s["retrieved"] == truth.uid and s["mse"][truth.uid] == 0.0
        mask = silhouette(truth.rgb, cfg.background, cfg.silhouette_tolerance)
        # The silhouette of a composited reference is its alpha wherever its colour leaves the background grey.
        assert s["iou"] == pytest.approx(iou(mask, truth.alpha > 0.5), abs=1e-4) and s["iou"] > 0.75
        assert s["psnr_object_db"] > 90
        assert s["views_retrieved"] == [truth.uid] * 4
    # Views of two objects: the mean may retrieve either, but per view they are not one object.
    mixed = np.concatenate([refs[0].rgb[:2], refs[1].rgb[2:]])
    s = score_images(mixed, refs[0], refs, cfg)
    assert s["views_retrieved"] == [refs[0].uid] * 2 + [refs[1].uid] * 2
    rows = [{"uid": r.uid, "views_retrieved": [r.uid] * 4} for r in refs]
    rows.append({"uid": refs[0].uid, "views_retrieved": s["views_retrieved"]})
    assert views_summary(rows) == {"views_retrieving_own": "14/16", "views_agree": "3/4"}
    # Flipped views (the azimuth mirrored) score worse against the truth than the truth itself.
    flipped = refs[0].rgb[:, :, ::-1]
    assert score_images(flipped, refs[0], refs, cfg)["mse"][refs[0].uid] > 0


def test_renders_scored_against_the_references_view_for_view(shared_reference, tmp_path, capsys):
    """A render directory scored as generated output (SDS meshes rendered back): the references themselves
    score full IoU and their own shifted IoU; an object swapped for another is retrieved as that other."""
    import json
    import shutil

    cfg = KnownAnswerConfig()
    doc = score_renders(shared_reference, shared_reference, tmp_path / "self", cfg, baseline=shared_reference)
    assert doc["mode"] == "renders" and doc["summary"]["retrieved_own"] == 3
    for row in doc["captions"]:
        assert row["iou"] == 1.0 and row["baseline_iou"] == 1.0 and row["mse_ratio_nearest_other"] > 1
        assert all(s["iou"] == s["truth_iou"] for s in row["shifted"].values())
    assert (tmp_path / "self" / "known_answer" / "obj-0000.png").is_file()

    swapped = tmp_path / "swapped"
    shutil.copytree(shared_reference, swapped)
    d0, d1 = (next(swapped.rglob(f"obj-000{i}/meta.json")).parent for i in (0, 1))
    for png in d1.glob("*.png"):
        shutil.copy(png, d0 / png.name)
    row = score_renders(swapped, shared_reference, tmp_path / "sw", cfg)["captions"][0]
    assert row["uid"] == "obj-0000" and row["retrieved"] == "obj-0001" and row["mse_ratio_nearest_other"] < 1
    # Another result in the same directory is replaced, and the replacement said (one line).
    score_renders(swapped, shared_reference, tmp_path / "self", cfg)
    said = capsys.readouterr().err
    assert "known_answer.json was written by another run (baseline was" in said and said.count("\n") == 1

    moved = tmp_path / "moved"
    shutil.copytree(shared_reference, moved)
    cams = next(moved.rglob("obj-0002/cameras.json"))
    doc_c = json.loads(cams.read_text())
    doc_c["views"][0]["c2w"][0][3] += 0.5  # the first evaluation camera moved
    cams.write_text(json.dumps(doc_c))
    with pytest.raises(UserError, match="has no view at the reference's camera"):
        score_renders(moved, shared_reference, tmp_path / "mv", cfg)
    junk = tmp_path / "junk"
    shutil.copytree(shared_reference, junk)
    for png in next(junk.rglob("obj-0002/meta.json")).parent.glob("*.png"):
        png.write_bytes(b"not a png")
    with pytest.raises(UserError, match="renders of obj-0002 are unreadable"):
        score_renders(junk, shared_reference, tmp_path / "j", cfg)
    assert not (tmp_path / "j" / "known_answer.json").exists()
    (tmp_path / "empty-renders").mkdir()
    with pytest.raises(UserError, match="no render under a uid"):
        score_renders(tmp_path / "empty-renders", shared_reference, tmp_path / "e", cfg)


def test_the_report_shows_each_result_beside_its_truth(shared_reference, tmp_path):
    """`mvdata report` on a run with a rendered-back result: the known-answer table with the numbers of
    known_answer.json, the strip, and the truth's and the result's turntables (GIFs of the first orbit)."""
    import base64
    import io
    import re

    from PIL import Image

    from mvforge.report import ReportConfig, write_report

    run = tmp_path / "run"
    doc = score_renders(shared_reference, shared_reference, run / "eval-sds", KnownAnswerConfig())
    html = write_report(run, ReportConfig(embed_images=True)).read_text()
    assert "eval-sds/: results rendered back at the ground-truth cameras" in html
    assert f"{doc['summary']['retrieved_own']}/3 results retrieve their own object" in html
    gifs = re.findall(r'src="data:image/gif;base64,([^"]+)"', html)
    assert len(gifs) == 2 * 3  # truth and result per object
    with Image.open(io.BytesIO(base64.b64decode(gifs[0]))) as gif:
        assert gif.n_frames == 8  # the synthetic references' one orbit of 8 views

    # Known-answer results kept elsewhere are added with --known-answer (repeatable), each shown once.
    import os
    import subprocess
    import sys
    from pathlib import Path

    mvdata = str(Path(sys.executable).with_name("mvdata"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    elsewhere = tmp_path / "kept" / "eval-dreambooth"
    score_renders(shared_reference, shared_reference, elsewhere, KnownAnswerConfig())
    proc = subprocess.run(
        [
            mvdata,
            "report",
            str(run),
            "--known-answer",
            str(elsewhere),
            "--known-answer",
            str(run / "eval-sds"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    html = (run / "report.html").read_text()
    assert html.count("eval-dreambooth/: ") == 1 and html.count("eval-sds/: ") == 1
    bad = subprocess.run(
        [mvdata, "report", str(run), "--known-answer", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "holds no known_answer.json; pass the --out of" in bad.stderr
    for where, said in ((tmp_path / "nope", "does not exist"), (run / "report.html", "is a file")):
        refused = subprocess.run(
            [mvdata, "report", str(run), "--known-answer", str(where)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert refused.returncode == 2 and f"--known-answer {where} {said};" in refused.stderr
    # A page given only results kept elsewhere neither says every section is empty nor fails where no
    # directory can be made for it; two results in folders of the same name are told apart by their paths.
    import shutil

    twin = shutil.copytree(elsewhere, tmp_path / "twin" / "eval-dreambooth")
    only = subprocess.run(
        [
            mvdata,
            "report",
            str(tmp_path / "page"),
            "--known-answer",
            str(elsewhere),
            "--known-answer",
            str(twin),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert only.returncode == 0 and "every section is empty" not in only.stderr, only.stderr
    page = (tmp_path / "page" / "report.html").read_text()
    assert f"{elsewhere}/: " in page and f"{twin}/: " in page
    if Path("/proc/self").is_dir():
        nowhere = subprocess.run(
            [mvdata, "report", "/proc/mvforge-page", "--known-answer", str(elsewhere)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert nowhere.returncode == 2 and "cannot create /proc/mvforge-page" in nowhere.stderr
        assert "Traceback" not in nowhere.stderr
        # A directory that exists but takes no new files: one line too.
        sealed = subprocess.run([mvdata, "report", "/proc/sys"], capture_output=True, text=True, env=env)
        assert sealed.returncode == 2 and "cannot write /proc/sys/report.html" in sealed.stderr, sealed.stderr


def test_missing_uid_and_empty_directory_are_one_line_errors(shared_reference, tmp_path):
    with pytest.raises(UserError, match="no finished render of nope"):
        load_references(shared_reference, KnownAnswerConfig(), ["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError):
        load_references(tmp_path / "empty", KnownAnswerConfig())


def test_run_writes_strips_and_scores_with_baselines_through_the_cli(tiny_mv, shared_reference, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    mvtrain = Path(sys.executable).with_name("mvtrain")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), HF_HUB_OFFLINE="1")
    out = tmp_path / "ka"
    args = [str(mvtrain), "eval", "--known-answer", "--model", str(tiny_mv), "--out", str(out)]
    run = [
        *args,
        "--reference",
        str(shared_reference),
        "--device",
        "cpu",
        "--set",
        "steps=2",
        "--max-prompts",
        "2",
    ]
    done = subprocess.run(run, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "captions retrieve their own object" in done.stdout
    doc = json.loads((out / "known_answer.json").read_text())
    assert (
        doc["summary"]["captions"] == 2 and len(doc["captions"][0]["mse"]) == 3
    )  # all objects are candidates
    assert doc["summary"]["shifted_cameras_further"].endswith("/4")
    assert 0 <= doc["summary"]["blank_image_retrieves_own"] <= 2
    from PIL import Image

    strip = Image.open(out / "known_answer" / "obj-0000.png")
    assert strip.size == (4 * 32, 4 * 32)  # truth, sample, two shifted rows of 4 views
    from mvforge.report import ReportConfig, write_report

    html = write_report(tmp_path, ReportConfig()).read_text()
    assert "Cameras: scored at orbit 0 of the reference renders, 4 views from view 0 of that orbit." in html
    assert f"mean IoU {doc['summary']['mean_iou']:.2f}," in html
    assert f"views retrieving their own {doc['summary']['views_retrieving_own']}," in html
    for r in doc["captions"]:  # each caption's views that retrieve its own object, in its row
        row = html[html.index(f"<tr><td>{r['uid']}</td>") :].split("</tr>")[0]
        assert f"<td>{r['views_retrieved'].count(r['uid'])}/4</td>" in row

    # The same weights, references, settings and prompts: the result is kept, nothing is sampled again.
    stamp = (out / "known_answer.json").stat().st_mtime_ns
    assert subprocess.run(run, capture_output=True, text=True, env=env).returncode == 0
    assert (out / "known_answer.json").stat().st_mtime_ns == stamp
    changed = subprocess.run([*run, "--seed", "5"], capture_output=True, text=True, env=env)
    assert changed.returncode == 0 and (out / "known_answer.json").stat().st_mtime_ns != stamp
    assert "was written by another run (config.seed was 23, now 5); scoring again" in changed.stderr

    # --prompts UID<TAB>PROMPT: only those objects, sampled with those prompts (a DreamBooth token).
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("# uid\tprompt\nobj-0001\ta photo of xjq object\n")
    one = [*args[:-1], str(tmp_path / "ka3"), "--reference", str(shared_reference), "--prompts", str(prompts)]
    done = subprocess.run(
        [*one, "--device", "cpu", "--set", "steps=1", "--set", "shifts_deg=[]"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shifted cameras not sampled" in done.stdout and "further 0/0" not in done.stdout
    assert "shifted cameras not sampled" in write_report(tmp_path, ReportConfig()).read_text()
    rows = json.loads((tmp_path / "ka3" / "known_answer.json").read_text())["captions"]
    assert [(r["uid"], r["caption"]) for r in rows] == [("obj-0001", "a photo of xjq object")]
    prompts.write_text("obj-0001 no tab\n")
    bad = subprocess.run([*one, "--device", "cpu"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "UID<TAB>PROMPT" in bad.stderr

    refused = subprocess.run([*args[:-1], str(tmp_path / "ka2")], capture_output=True, text=True, env=env)
    assert (
        refused.returncode == 2
        and "--reference" in refused.stderr
        and len(refused.stderr.strip().splitlines()) == 1
    )


def test_a_shift_is_further_when_most_views_are_nearer_ties_are_not():
    from mvforge.eval.known_answer import shift_is_further

    assert [shift_is_further({"views_nearer_at_true_camera": n}, 4) for n in range(5)] == [0, 0, 0, 1, 1]


def test_the_shift_count_reads_not_sampled_only_when_none_were():
    from mvforge.formats.eval_result import shifted_text

    assert shifted_text({"shifted_cameras_further": "3/40"}) == "shifted cameras further 3/40"
    assert shifted_text({"shifted_cameras_further": "0/6"}) == "shifted cameras further 0/6"
    assert shifted_text({"shifted_cameras_further": "0/0"}) == "shifted cameras not sampled"
