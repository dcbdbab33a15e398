"""The tiny model, saved and loaded through the real-weights path (file and local-dir:), scores
exactly what a hand-written open_clip computation gives on the same images and texts."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mvforge.errors import UserError
from mvforge.filter.clip import Scorer, composite, object_text, view_subset
from mvforge.filter.config import TextConfig, ViewsConfig
from mvforge.filter.tiny import TINY_NAME, WEIGHTS
from mvforge.formats import renders as layout
from mvforge.models.clip import check_quickgelu
from tests.fixtures.synthetic import write_synthetic_object

CAPTIONS = {"obj-a": "a red teapot", "obj-b": "wooden chair", "obj-c": "a small blue car"}


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    root = tmp_path_factory.mktemp("renders")
    for i, (uid, caption) in enumerate(CAPTIONS.items()):
        write_synthetic_object(root, uid, caption, views=8, resolution=40, seed=i)
    return root


@pytest.fixture(scope="module")
def scorers(make_cfg, renders):
    """The tiny model loaded both ways the real weights are, 4 of 8 views scored (one load each per module)."""
    return {
        local_dir: Scorer(
            str(renders), make_cfg(local_dir=local_dir, views=ViewsConfig(count=4)), device="cpu"
        )
        for local_dir in (False, True)
    }


@pytest.fixture(scope="module")
def reference_model(tiny_clip):
    """open_clip by hand, independent of mvforge's loader: (model, preprocess, tokenizer)."""
    open_clip.add_model_config(tiny_clip / f"{TINY_NAME}.json")
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_NAME, pretrained=str(tiny_clip / WEIGHTS)
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(TINY_NAME)


def direct_cosines(reference_model, root, uid: str, caption: str, views: list[int]) -> np.ndarray:
    """The reference: PIL compositing on white, the default template, cosines of normalised embeddings."""
    model, preprocess, tokenizer = reference_model
    images = []
    for v in views:
        rgba = Image.open(layout.object_dir(root, uid) / layout.view_name(v)).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        images.append(preprocess(Image.alpha_composite(white, rgba).convert("RGB")))
    with torch.no_grad():
        img = model.encode_image(torch.stack(images))
        txt = model.encode_text(tokenizer([f"a 3D model of {caption}"]))
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (img @ txt[0]).numpy()


@pytest.mark.parametrize("local_dir", [False, True], ids=["checkpoint-file", "local-dir"])
def test_scores_equal_direct_open_clip(scorers, reference_model, renders, local_dir):
    table = scorers[local_dir]({"uid": list(CAPTIONS)}).to_pylist()
    assert [r["uid"] for r in table] == list(CAPTIONS)
    for row in table:
        assert row["reason"] == ""
        assert row["views"] == [0, 2, 4, 6]  # 4 of 8, evenly spaced
        assert row["text"] == f"a 3D model of {CAPTIONS[row['uid']]}"
        expected = direct_cosines(reference_model, renders, row["uid"], CAPTIONS[row["uid"]], row["views"])
        np.testing.assert_allclose(row["cosines"], expected, rtol=0, atol=1e-5)
    # Views differ (the ellipse moves with the azimuth), so equal cosines would hide a wrong view order.
    assert len(set(np.round(table[0]["cosines"], 6))) > 1


def test_weights_are_loaded_and_model_is_in_eval_mode(scorers):
    """Both loaders hold the saved weights, not another random init of the same architecture."""
    torch.manual_seed(123)
    other = open_clip.create_model(TINY_NAME, pretrained=None)
    for s in scorers.values():
        assert s.model.training is False
        diff = sum(
            (p - q).abs().sum().item() for p, q in zip(s.model.parameters(), other.parameters(), strict=True)
        )
        assert diff > 1.0


def test_openai_weights_need_quickgelu():
    # The fix names the option the commands take (docs/cli.md: a CLIP model is --clip-model).
    with pytest.raises(UserError, match="use --clip-model ViT-B-32-quickgelu"):
        check_quickgelu("ViT-B-32", "openai")
    check_quickgelu("ViT-B-32-quickgelu", "openai")  # the right pairing passes (no download: a table look-up)
    check_quickgelu("ViT-B-32", "laion2b_s34b_b79k")  # GELU weights on a GELU model


def test_bad_pretrained_is_a_user_error(make_cfg, renders, tmp_path):
    from mvforge.filter.clip import model_spec
    from mvforge.filter.config import ClipModelConfig

    with pytest.raises(UserError, match="neither a file nor a tag"):
        model_spec(make_cfg(model=ClipModelConfig(name="ViT-B-32", pretrained=str(tmp_path / "nope.pt"))))
    with pytest.raises(UserError, match="open_clip_config.json"):
        model_spec(make_cfg(model=ClipModelConfig(pretrained=f"local-dir:{tmp_path}")))
    with pytest.raises(UserError, match="unknown open_clip model"):
        model_spec(make_cfg(model=ClipModelConfig(name="ViT-Q-99", pretrained="x")))
    with pytest.raises(UserError, match="ViT-B-32-quickgelu"):  # the loader refuses it, not only the helper
        model_spec(make_cfg(model=ClipModelConfig(name="ViT-B-32", pretrained="openai")))


def test_object_text():
    from mvforge.filter.config import FilterConfig

    cfg = FilterConfig()
    assert (
        object_text({"caption": "  a  red\nteapot ", "name": "teapot"}, cfg) == "a 3D model of a red teapot"
    )
    assert object_text({"caption": "", "name": "chair"}, cfg) == "a 3D model of chair"
    assert object_text({"caption": None, "name": "  "}, cfg) == ""
    tagged = FilterConfig(text=TextConfig(include_tags=True, max_tags=2, template="{}"))
    meta = {"name": "car", "tags": [{"name": "vehicle"}, "red", "toy"]}
    assert object_text(meta, tagged) == "car, vehicle, red"


def test_view_subset():
    assert view_subset(32, 8) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert view_subset(8, 3) == [0, 2, 5]
    assert view_subset(4, 8) == [0, 1, 2, 3]  # fewer rendered than asked: all of them
    # Two orbits of 32 (index = orbit * 32 + azimuth step): the same 4 azimuths of each orbit.
    assert view_subset(64, 8) == [0, 8, 16, 24, 32, 40, 48, 56]


def test_composite_is_straight_alpha_over_background():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    out = np.asarray(composite(Image.fromarray(rgba, "RGBA"), (255, 255, 255))).astype(np.float64)
    a = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * a + 255.0 * (1 - a)
    assert np.abs(out - expected).max() <= 1.0  # 8-bit rounding only


def test_random_bytes_as_pretrained_are_one_line_from_the_driver(tmp_path):
    from mvforge.filter.clip import model_spec
    from mvforge.filter.config import ClipModelConfig, FilterConfig

    junk = tmp_path / "weights.bin"
    junk.write_bytes(bytes(range(256)) * 64)
    cfg = FilterConfig(model=ClipModelConfig(pretrained=str(junk)))
    with pytest.raises(UserError, match=rf"--clip-pretrained {junk}: .*not a readable open_clip checkpoint"):
        model_spec(cfg)
