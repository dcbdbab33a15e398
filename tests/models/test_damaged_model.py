"""A model directory with a truncated weights file is one line naming the file, not diffusers' traceback
(docs/reliability.md)."""

from __future__ import annotations

import shutil

import pytest

from mvforge.errors import UserError
from mvforge.models import MultiViewDiffusion


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder"])
def test_a_truncated_safetensors_in_a_pipeline_is_one_line_naming_it(tiny_mv, tmp_path, part):
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_mv, pipe)
    (weights,) = (pipe / part).glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(
        UserError, match=rf"^{weights}: holds \d+ bytes, its header needs \d+ .*copy the model again"
    ):
        MultiViewDiffusion.from_pretrained(pipe)
