"""The real Inception extractor from a local weights file (docs/eval.md): torchvision's Inception v3 architecture
loaded from a state dict on disk (random weights here: nothing may be downloaded), 2048-d pool features and 1000
logits; a wrong file is a one-line UserError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mvforge.errors import UserError
from mvforge.eval.extractors import InceptionFeatures


def test_inception_from_local_weights(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pth"
    torch.save(model.state_dict(), path)
    ext = InceptionFeatures(path)
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    feats, logits = ext(images)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1000)
    assert np.isfinite(feats).all() and not np.allclose(feats[0], feats[1])
    again, _ = ext(images[:1])
    np.testing.assert_allclose(again[0], feats[0], rtol=1e-5, atol=1e-6)  # eval mode: batch-independent

    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match="is not torchvision inception_v3 weights"):
        InceptionFeatures(wrong)


def test_open_clip_loads_through_the_shared_loader_both_ways_with_eval_errors(tiny_clip_dir, tmp_path):
    """``OpenClip`` uses ``mvforge.models.clip.load_clip`` (the filter's loader): the tiny model as a checkpoint
    file (+ its JSON config) and as local-dir: give the same embeddings; errors name eval's options."""
    from mvforge.eval.extractors import OpenClip
    from mvforge.filter.tiny import TINY_NAME, WEIGHTS

    by_file = OpenClip(TINY_NAME, str(tiny_clip_dir / WEIGHTS), tiny_clip_dir / f"{TINY_NAME}.json")
    by_dir = OpenClip("unused", f"local-dir:{tiny_clip_dir}")
    assert by_file.name == f"open_clip {TINY_NAME} ({WEIGHTS})"
    assert by_dir.name == f"open_clip local-dir:{tiny_clip_dir}"
    assert by_file.model.training is False and by_dir.model.training is False
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    np.testing.assert_allclose(by_file.images(images), by_dir.images(images), rtol=0, atol=1e-6)
    np.testing.assert_allclose(by_file.texts(["a mug"]), by_dir.texts(["a mug"]), rtol=0, atol=1e-6)

    with pytest.raises(UserError, match="eval downloads nothing"):  # a tag is not local weights
        OpenClip("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(UserError, match="--clip-model-config .* does not exist"):
        OpenClip(TINY_NAME, str(tiny_clip_dir / WEIGHTS), tmp_path / "missing.json")
    with pytest.raises(UserError, match="--clip-pretrained local-dir:.*no open_clip_config.json"):
        OpenClip("unused", f"local-dir:{tmp_path}")
    with pytest.raises(UserError, match="--clip-model-config"):  # unknown name: points at the JSON option
        OpenClip("ViT-Q-99", str(tiny_clip_dir / WEIGHTS))
    junk = tmp_path / "weights.bin"
    junk.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(UserError, match=rf"--clip-pretrained {junk}: .*not a readable open_clip checkpoint"):
        OpenClip(TINY_NAME, str(junk), tiny_clip_dir / f"{TINY_NAME}.json")
