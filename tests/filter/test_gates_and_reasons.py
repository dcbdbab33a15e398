"""Gates on synthetic renders, and an unreadable PNG or a missing view is a reason, not a crash."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mvforge.filter.config import GatesConfig
from mvforge.filter.gates import GATE_REASONS, PIXEL_COLUMNS, gate_table, pixel_metrics, view_metrics
from mvforge.filter.pipeline import run_filter
from mvforge.formats import renders as layout
from tests.fixtures.synthetic import synthetic_view, write_synthetic_object


def test_view_metrics_on_handmade_images():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:5, 3:7] = (200, 10, 10, 255)  # 12 object pixels, none on the border
    rgba[0, 0] = (0, 0, 0, 5)  # faint alpha below the threshold: background
    rgb = np.full((10, 10, 3), 255, np.uint8)
    rgb[2:5, 3:7] = (200, 10, 10)
    cov, border, std = view_metrics(rgba, rgb, alpha_threshold=8)
    assert cov == pytest.approx(12 / 100)
    assert border == 0.0
    expected = np.mean([rgb[..., c].astype(np.float64).std() for c in range(3)]) / 255
    assert std == pytest.approx(expected, rel=1e-5)
    rgba[0, :, 3] = 255  # the whole top row: 10 of the 36 ring pixels
    assert view_metrics(rgba, rgb, 8)[1] == pytest.approx(10 / 36)
    flat = np.zeros((10, 10, 3), np.uint8) + np.array([10, 120, 240], np.uint8)
    assert view_metrics(rgba, flat, 8)[2] == 0.0  # distinct channels, each flat: uniform


def test_border_gate_tolerates_a_graze_and_catches_a_backdrop():
    """Real renders frame the unit cube inside the image, so border contact is rare. An object grazing the
    border with a few pixels in one view is kept; one cut in most views (a ground plane) is flagged."""
    ring = 4 * 256 - 4  # outermost pixel ring of a 256² view
    graze = [0.0] * 7 + [5 / ring]  # 5 antialiased pixels on the edge of one view in 8
    one_view_cut = [0.0] * 7 + [0.4]  # one view badly cut: still a minority of views
    backdrop = [0.3] * 6 + [0.0] * 2  # cut in 6 of 8 views
    lists = [graze, one_view_cut, backdrop]
    ok = [[0.2] * 8] * 3
    table = gate_table(ok, lists, ok, GatesConfig())
    assert table["gate_cut_by_border"].tolist() == [False, False, True]
    assert table["border_cut_fraction"].tolist() == [0.0, 1 / 8, 6 / 8]


def test_pixel_safety_net_measures_each_fault():
    """The pixel safety net (docs/filter.md): magenta (a missing image, lit and shadowed), crushed, blown and
    faint views, on synthetic images."""
    views = {
        k: np.asarray(synthetic_view((90, 140, 60), 0.0, 64, k))
        for k in ("ok", "magenta", "dark", "bright", "faint")
    }
    m = {k: pixel_metrics(v, alpha_threshold=8) for k, v in views.items()}
    magenta, dark, clipped, opaque = zip(*m.values(), strict=True)
    names = list(m)
    # Each fault shows in its own measure only; the ordinary view shows none of them.
    assert m["ok"][:3] == (0.0, 0.0, 0.0) and m["ok"][3] > 0.9
    assert names[int(np.argmax(magenta))] == "magenta" and m["magenta"][0] > 0.95  # both halves count
    assert names[int(np.argmax(dark))] == "dark" and m["dark"][1] == 1.0
    assert names[int(np.argmax(clipped))] == "bright" and m["bright"][2] == 1.0
    assert names[int(np.argmin(opaque))] == "faint" and m["faint"][3] == 0.0
    # Pink, purple and red are not the missing-image colour.
    for rgb in ((255, 105, 180), (128, 0, 255), (230, 20, 30), (60, 10, 58)):
        img = np.zeros((4, 4, 4), np.uint8) + np.array([*rgb, 255], np.uint8)
        assert pixel_metrics(img, 8)[0] == (1.0 if rgb == (60, 10, 58) else 0.0), rgb
    assert pixel_metrics(np.zeros((4, 4, 4), np.uint8), 8) == (0.0, 0.0, 0.0, 0.0)  # no object: no verdict
    # The gates over 8 views each: a fault in every view trips its gate, a few such pixels per view do not.
    few = [[0.05] * 8]
    every = [[1.0] * 8]
    zero = [[0.0] * 8]
    full = [[1.0] * 8]
    ok = [[0.2] * 8]
    for column, gate, bad, good in (
        ("view_magenta", "gate_missing_texture_color", every, few),
        ("view_dark", "gate_underexposed", every, few),
        ("view_clipped", "gate_overexposed", every, few),
        ("view_opaque", "gate_faint_alpha", zero, full),
    ):
        pixels = {c: zero + zero for c in PIXEL_COLUMNS} | {"view_opaque": full + full}
        pixels[column] = bad + good
        table = gate_table(ok * 2, zero * 2, ok * 2, GatesConfig(), pixels=pixels)
        assert table[gate].tolist() == [True, False], gate
        assert sum(table[g].sum() for g in (f"gate_{r}" for r in GATE_REASONS)) == 1, gate


def test_border_gate_is_off_under_mvdream_framing_and_stripped_textures_drop():
    backdrop = [[0.3] * 8] * 3
    ok = [[0.2] * 8] * 3
    table = gate_table(ok, backdrop, ok, GatesConfig(), framing=["fit", "mvdream", None])
    assert table["gate_cut_by_border"].tolist() == [True, False, True]
    table = gate_table(ok, [[0.0] * 8] * 3, ok, GatesConfig(), stripped_textures=[0, 2, None])
    assert table["gate_stripped_textures"].tolist() == [False, True, False]
    kept = gate_table(ok, ok, ok, GatesConfig(keep_stripped_textures=True), stripped_textures=[0, 2, 0])
    assert not kept["gate_stripped_textures"].any()


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, make_cfg):
    """One in-process run over good objects, the four gate kinds and three broken objects."""
    root = tmp_path_factory.mktemp("renders")
    for i in range(4):
        write_synthetic_object(root, f"good-{i}", f"object {i}", views=8, resolution=32, seed=i)
    for kind in ("empty", "border", "tiny", "uniform"):
        # "tiny" is a 3x3 square: 0.22% of a 64² view, under the default 0.25% limit.
        res = 64 if kind == "tiny" else 32
        write_synthetic_object(root, f"gate-{kind}", f"a {kind} object", views=8, resolution=res, kind=kind)
    # The pixel safety net (docs/filter.md), a repaired render, and cut corners that the paper's framing expects.
    for kind in ("magenta", "dark", "bright", "faint"):
        write_synthetic_object(root, f"net-{kind}", f"a {kind} object", views=8, resolution=32, kind=kind)
    write_synthetic_object(
        root, "net-stripped", "a stripped object", views=8, resolution=32, stripped_textures=1
    )
    write_synthetic_object(
        root, "good-cut-mvdream", "a big object", views=8, kind="border", framing="mvdream"
    )
    # Broken on disk: garbage bytes, a truncated PNG, a deleted view, no views at all, no text. The four bad-*
    # objects share one batch (sorted uids, 4 per batch): a batch with nothing to score must not crash.
    for uid in ("bad-garbage", "bad-truncated", "bad-missing", "bad-noviews", "no-text"):
        write_synthetic_object(root, uid, "" if uid == "no-text" else "a thing", views=8, resolution=32)
    (layout.object_dir(root, "bad-garbage") / "002.png").write_bytes(b"this is not a png")
    png = layout.object_dir(root, "bad-truncated") / "004.png"
    png.write_bytes(png.read_bytes()[:60])
    (layout.object_dir(root, "bad-missing") / "006.png").unlink()
    cams = layout.object_dir(root, "bad-noviews") / layout.CAMERAS
    cams.write_text(json.dumps({**json.loads(cams.read_text()), "views": []}))
    out = tmp_path_factory.mktemp("filter")
    summary = run_filter(root, out, make_cfg(), progress=False)
    scores = pd.read_parquet(out / "scores.parquet").set_index("uid")
    selection = pd.read_parquet(out / "selection.parquet").set_index("uid")
    return summary, scores, selection, out


def test_gates_on_synthetic_renders(filtered):
    _, scores, selection, _ = filtered
    gates = [f"gate_{r}" for r in GATE_REASONS]
    flags = scores[gates]
    for uid in [f"good-{i}" for i in range(4)] + ["good-cut-mvdream"]:
        assert not flags.loc[uid].any(), f"{uid} failed a gate: {flags.loc[uid].to_dict()}"
    assert scores.loc["good-cut-mvdream", "framing"] == "mvdream"
    assert scores.loc["good-cut-mvdream", "border_cut_fraction"] > 0.5  # cut, as the paper's framing allows
    assert flags.loc["gate-empty", "gate_empty_render"]
    assert (
        flags.loc["gate-border", "gate_cut_by_border"] and not flags.loc["gate-border", "gate_empty_render"]
    )
    assert flags.loc["gate-tiny", "gate_tiny_coverage"] and not flags.loc["gate-tiny", "gate_empty_render"]
    assert (
        flags.loc["gate-uniform", "gate_uniform_color"] and not flags.loc["gate-uniform", "gate_empty_render"]
    )
    expected = {
        "gate-empty": "empty_render",
        "gate-border": "cut_by_border",
        "gate-tiny": "tiny_coverage",
        "gate-uniform": "uniform_color",
        "net-magenta": "missing_texture_color",
        "net-dark": "underexposed",
        "net-bright": "overexposed",
        "net-faint": "faint_alpha",
        "net-stripped": "stripped_textures",
    }
    for uid, reason in expected.items():
        assert selection.loc[uid, "reason"] == reason
        assert not selection.loc[uid, "kept"]
    # Gate-dropped objects are still scored: the scores exist before any decision (design §2.2).
    assert scores.loc[list(expected), "aggregate"].notna().all()


def test_broken_objects_become_reasons(filtered):
    summary, scores, selection, _ = filtered
    assert summary["objects"] == 19
    expected = {
        "bad-garbage": ("unreadable_view", "002.png"),
        "bad-truncated": ("unreadable_view", "004.png"),
        "bad-missing": ("missing_view", "006.png"),
        "bad-noviews": ("no_views", "cameras.json"),
        "no-text": ("empty_text", "caption"),
    }
    for uid, (reason, word) in expected.items():
        assert scores.loc[uid, "reason"] == reason
        assert word in scores.loc[uid, "message"]
        assert len(scores.loc[uid, "cosines"]) == 0 and np.isnan(scores.loc[uid, "aggregate"])
        assert selection.loc[uid, "reason"] == reason and not selection.loc[uid, "kept"]
    # An untitled object still gets its gate measurements; an unreadable one gets none (NaN, no gate).
    assert len(scores.loc["no-text", "view_coverage"]) == 8
    assert np.isnan(scores.loc["bad-missing", "coverage_mean"])
    assert not scores.loc["bad-missing", ["gate_empty_render", "gate_uniform_color"]].any()
    # The keep-fraction pool is the 5 good objects: ceil(0.5 x 5) = 3 kept.
    assert int(selection["kept"].sum()) == 3
    assert selection.loc[selection["kept"]].index.str.startswith("good-").all()


def test_report_has_histogram_counts_and_sheets(filtered):
    *_, out = filtered
    html = (out / "report.html").read_text()
    assert "<svg" in html and "threshold" in html
    for title in ("Kept (best first)", "Near the threshold", "Dropped (worst first)"):
        assert title in html
    assert html.count("data:image/png;base64,") >= 4
    assert "missing_view" in html and "empty_render" in html
