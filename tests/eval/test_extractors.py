"""The real Inception extractor from a local weights file (issue 15): torchvision's Inception v3 architecture
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
