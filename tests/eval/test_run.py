"""A killed eval (docs/eval.md) resumes without regenerating a finished prompt and gives the
same eval.json as an uninterrupted run (deterministic for a seed); bad inputs end with one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mvforge.errors import UserError
from mvforge.eval import extractors, run


class Counting:
    """Counts pipeline calls; raises KeyboardInterrupt (a kill) on call ``kill_at`` when given."""

    def __init__(self, pipe, kill_at: int | None = None):
        self.pipe, self.kill_at, self.calls = pipe, kill_at, 0

    def __call__(self, *args, **kwargs):
        if self.kill_at is not None and self.calls == self.kill_at:
            raise KeyboardInterrupt
        self.calls += 1
        return self.pipe(*args, **kwargs)


@pytest.fixture(scope="module")
def pipe(tiny_mv):
    from mvforge.models.pipeline import MultiViewDiffusion

    p = MultiViewDiffusion.from_pretrained(tiny_mv, "cpu").pipeline("ddim")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return extractors.OpenClip("unused", f"local-dir:{tiny_clip_dir}")


def test_killed_run_resumes_without_regenerating(tmp_path, pipe, clip, reference_dir, small_cfg):
    from mvforge import config as config_mod

    small_cfg = config_mod.set_field(small_cfg, "max_prompts", 2)  # 2 of the 3 reference captions
    feats = extractors.TinyFeatures()
    killed = Counting(pipe, kill_at=1)
    with pytest.raises(KeyboardInterrupt):
        run.run_eval(killed, "tiny", reference_dir, tmp_path / "a", small_cfg, feats, clip)
    assert killed.calls == 1 and not (tmp_path / "a" / "eval.json").exists()

    resumed = Counting(pipe)
    doc = run.run_eval(resumed, "tiny", reference_dir, tmp_path / "a", small_cfg, feats, clip)
    assert resumed.calls == 1  # 2 prompts, 1 finished before the kill

    fresh = Counting(pipe)
    run.run_eval(fresh, "tiny", reference_dir, tmp_path / "b", small_cfg, feats, clip)
    assert fresh.calls == 2
    a = (tmp_path / "a" / "eval.json").read_text()
    assert a == (tmp_path / "b" / "eval.json").read_text()  # same seed -> same views -> same numbers

    again = Counting(pipe)
    run.run_eval(again, "tiny", reference_dir, tmp_path / "a", small_cfg, feats, clip)
    assert again.calls == 0 and (tmp_path / "a" / "eval.json").read_text() == a

    g = doc["metrics"]["generated"]
    assert doc["prompts"] == {"count": 2, "source": "reference captions"}
    assert g["images"] == 8 and doc["metrics"]["reference"]["images"] == 12
    assert g["fid"] > 0 and g["kid"]["subset_size"] == 8 and g["kid"]["n"] == 100
    assert 0 <= g["clip_score"]["over_images"]["mean"] <= 100 and g["clip_score"]["over_prompts"]["n"] == 2
    assert doc["preparation"] == {
        "background_rgb": [255, 255, 255],
        "image_size": 32,
        "resize": "PIL bicubic",
    }
    rows = (tmp_path / "a" / "eval.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("0,synthetic object number 0,")
    assert (tmp_path / "a" / "grids" / "generated.png").is_file()
    timing = json.loads((tmp_path / "a" / "timing.json").read_text())
    assert timing["prompts_generated"] == 0 and timing["scoring_s"] > 0


def test_resume_with_other_settings_is_refused(tmp_path, pipe, clip, reference_dir, small_cfg):
    from mvforge import config as config_mod

    out = tmp_path / "e"
    small = config_mod.set_field(small_cfg, "max_prompts", 1)
    run.run_eval(pipe, "tiny", reference_dir, out, small, extractors.TinyFeatures(), clip)
    other = config_mod.set_field(small, "sample.seed", 7)
    with pytest.raises(
        UserError,
        match=r"other settings \(sample.seed was \d+, now 7\); pass the same settings to resume it, or another --out",
    ):
        run.run_eval(pipe, "tiny", reference_dir, out, other, extractors.TinyFeatures(), clip)


def test_reference_without_renders_and_missing_weights(tmp_path, clip, small_cfg):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no finished renders and no shards"):
        run.run_eval(
            None, "m", tmp_path / "empty", tmp_path / "o", small_cfg, extractors.TinyFeatures(), clip
        )
    with pytest.raises(UserError, match="pass --inception-weights FILE"):
        extractors.InceptionFeatures(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="--clip-pretrained"):
        extractors.OpenClip("ViT-B-32", str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="no CLIP weights"):
        extractors.OpenClip("ViT-B-32", "")


def _mvtrain(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mvtrain")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)


def test_cli_blank_prompts_file_is_one_line_error(tmp_path, tiny_mv, reference_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n   \n\n")
    res = _mvtrain(
        "eval", "--model", str(tiny_mv), "--reference", str(reference_dir), "--out", str(tmp_path / "o"),
        "--prompts", str(prompts), "--features", "tiny",
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds no prompts" in lines[0], res.stderr


def test_cli_tiny_eval_and_sds(tmp_path, tiny_mv, tiny_clip_dir, reference_dir):
    """The whole command on the tiny model (as `make demo` runs it), plus --sds on a hand-made SDS result."""
    from PIL import Image

    sds = tmp_path / "sds" / "a-red-mug"
    (sds / "snapshots").mkdir(parents=True)
    (sds / "summary.json").write_text(json.dumps({"prompt": "a red mug"}))
    frames = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(6)]
    frames[0].save(sds / "turntable.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "eval"
    res = _mvtrain(
        "eval", "--model", str(tiny_mv), "--reference", str(reference_dir), "--out", str(out),
        "--features", "tiny", "--clip-pretrained", f"local-dir:{tiny_clip_dir}", "--steps", "1",
        "--image-size", "32", "--max-prompts", "1", "--sds", str(tmp_path / "sds"),
        "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((out / "eval.json").read_text())
    assert doc["prompts"]["count"] == 1 and doc["views_per_prompt"] == 4
    # No --resolution: the model's own side (32 px for the tiny model), recorded as a number.
    (meta,) = out.glob("generated/*/sample.json")
    assert json.loads(meta.read_text())["config"]["resolution"] == 32
    assert Image.open(meta.with_name("view_00.png")).size == (32, 32)
    sds_doc = json.loads((out / "sds.json").read_text())
    (row,) = sds_doc["results"]
    assert row["prompt"] == "a red mug" and row["source"] == "turntable" and row["views"] == 6
    assert row["consistency"] is not None and 0 <= row["clip_score"]["mean"] <= 100

    # The report's eval section: the Table 1-shaped rows, the SDS row and the caveat before the paper's figures.
    from mvforge.report import write_report

    html = write_report(tmp_path).read_text()
    section = html[html.index('<section id="eval">') :]
    assert "generated (4 images)" in section and "reference renders (12 images)" in section
    assert "a red mug" in section and "not comparable with the paper" in section
    assert section.index("Not comparable") < section.index("40.38")
    assert 'src="eval/grids/generated.png"' in section


def test_sds_snapshot_tiles_and_missing_results(tmp_path, clip):
    """Without a turntable, the latest snapshot's square tiles are the views (docs/sds.md, "Output")."""
    from PIL import Image

    from mvforge.eval import sds

    res = tmp_path / "sds" / "a-mug"
    (res / "snapshots").mkdir(parents=True)
    (res / "summary.json").write_text(json.dumps({"prompt": "a mug"}))
    Image.new("RGB", (64, 16), (0, 0, 0)).save(res / "snapshots" / "step-000050.png")
    strip = Image.new("RGB", (64, 16), (255, 0, 0))
    strip.paste((0, 255, 0), (16, 0, 32, 16))
    strip.save(res / "snapshots" / "step-000100.png")
    views, turntable = sds.result_views(res, 8)
    assert not turntable and [v.getpixel((8, 8))[:3] for v in views] == [
        (255, 0, 0), (0, 255, 0), (255, 0, 0), (255, 0, 0),
    ]  # fmt: skip
    (row,) = sds.score_sds([tmp_path / "sds"], clip, lambda im: run.prepare(im, (255, 255, 255), 32))
    assert row["source"] == "snapshot" and row["views"] == 4 and row["consistency"] is not None
    with pytest.raises(UserError, match="no summary.json"):
        sds.score_sds([tmp_path / "nothing"], clip, lambda im: im)


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--features", "tiny", "--inception-weights", "{tmp}/w.pth"], "read by features = inception only"),
        (["--inception-weights", "{tmp}/nosuch.pth"], "nosuch.pth is not a file; pass torchvision's"),
        (["--known-answer", "--max-prompts", "-1"], "--max-prompts -1: pass 0 (all objects)"),
    ],
)
def test_cli_a_flag_that_would_do_nothing_or_find_nothing_is_refused(
    tmp_path, tiny_mv, reference_dir, extra, said
):
    (tmp_path / "w.pth").write_bytes(b"")
    res = _mvtrain(
        "eval", "--model", str(tiny_mv), "--reference", str(reference_dir), "--out", str(tmp_path / "o"),
        *(a.format(tmp=tmp_path) for a in extra),
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and said in lines[0], res.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is written
