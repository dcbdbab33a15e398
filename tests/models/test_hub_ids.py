"""Hub ids (``org/name``) wherever a model is taken: resolved through huggingface_hub's cache, which the test
fills itself in the cache's own layout (no network: HF_HUB_OFFLINE=1, tests/conftest.py); one-line errors and
nothing created when the model cannot be had."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mvforge.cli.mvtrain import app
from mvforge.errors import UserError
from mvforge.models.pipeline import MultiViewDiffusion, check_sd_dir
from mvforge.models.resolve import is_hub_id, local_model_dir, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(cache: Path, repo_id: str, src: Path) -> Path:
    """``src`` as huggingface_hub caches a downloaded repository: models--org--name/{refs/main, snapshots/C}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(src, repo / "snapshots" / COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_ids_resolve_through_the_cache(hub_cache, tiny_mv, tiny_sd, tmp_path, monkeypatch):
    """Fails before: "mvforge-test/tiny-mv" was read as a relative path (does not exist)."""
    mv = _cache(hub_cache, "mvforge-test/tiny-mv", tiny_mv)
    sd = _cache(hub_cache, "mvforge-test/tiny-sd", tiny_sd)
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("mvforge-test/tiny-mv") and not is_hub_id("./a/b") and not is_hub_id("a/b/c")
    assert local_model_dir("mvforge-test/tiny-mv") == mv and resolve_model("mvforge-test/tiny-mv") == mv
    assert check_sd_dir("mvforge-test/tiny-sd") == sd  # fit's frozen parts
    fit_start = MultiViewDiffusion.from_pretrained("mvforge-test/tiny-sd", stable_diffusion=True)
    assert fit_start.unet.config.class_embed_type == "projection"
    # An existing directory of the same name wins over the Hub.
    (tmp_path / "mvforge-test" / "tiny-mv").mkdir(parents=True)
    assert local_model_dir("mvforge-test/tiny-mv") == Path("mvforge-test/tiny-mv")
    shutil.rmtree(tmp_path / "mvforge-test")
    args = ["sample", "--model", "mvforge-test/tiny-mv", "--prompt", "a cup", "--out", str(tmp_path / "s")]
    result = CliRunner().invoke(app, [*args, "--steps", "1", "--resolution", "16", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (tmp_path / "s" / "grid.png").is_file()


def _photos(root: Path) -> Path:
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("command", ["fit", "sample", "sds", "eval", "dreambooth"])
def test_a_hub_id_that_cannot_be_had_is_one_line_and_creates_nothing(command, hub_cache, tmp_path):
    """Fails before: fit said ".../nobody/missing has no vae/" after creating its run directory."""
    out = tmp_path / "out"
    model = "nobody/missing-model"
    args = {
        "fit": ["fit", "--model", model, "--shards", str(tmp_path), "--out", str(out)],
        "sample": ["sample", "--model", model, "--prompt", "a cup", "--out", str(out)],
        "sds": ["sds", "--model", model, "--prompt", "a cup", "--out", str(out), "--device", "cpu"],
        "eval": ["eval", "--model", model, "--reference", str(tmp_path), "--out", str(out)],
        "dreambooth": [
            "dreambooth", "--model", model, "--images", str(_photos(tmp_path / "photos")),
            "--prompt", "a sks dog", "--out", str(out), "--device", "cpu",
        ],
    }[command]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, UserError), result.output + repr(result.exception)
    message = str(result.exception)
    assert "\n" not in message and "hf download nobody/missing-model" in message, message
    assert not out.exists()
