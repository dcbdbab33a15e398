"""A tiny random-init open_clip model written to disk like real weights, for tests and the offline demo.

Nothing may be downloaded here (docs/design.md §6), so tests build this model, save it, and load it back
through the same ``mvforge.models.clip.load_clip`` path as real weights: as a checkpoint file (``--clip-model
mvforge-tiny-clip --clip-model-config DIR/mvforge-tiny-clip.json --clip-pretrained
DIR/open_clip_model.safetensors``) or as ``--clip-pretrained local-dir:DIR``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mvforge.fsutil import atomic_write_bytes, atomic_write_text

TINY_NAME = "mvforge-tiny-clip"
WEIGHTS = "open_clip_model.safetensors"

# A ViT and a text transformer of 2 layers x 32 wide: ~1.7M parameters, almost all of them the token
# embedding (open_clip's BPE vocabulary of 49408 is kept so the real tokenizer works unchanged).
TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def write_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """Write DIR/{mvforge-tiny-clip.json, open_clip_config.json, open_clip_model.safetensors}; return DIR.

    The JSON named after the model is what ``open_clip.add_model_config`` registers; open_clip_config.json +
    weights is the hf-hub-style folder that ``local-dir:DIR`` loads. Same seed, same weights.
    """
    import open_clip
    import torch
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_file = out / f"{TINY_NAME}.json"
    atomic_write_text(config_file, json.dumps(TINY_MODEL_CFG, indent=2) + "\n")
    open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns that a random init has no pretrained weights: intended
    try:
        model = open_clip.create_model(TINY_NAME, pretrained=None, device="cpu")
    finally:
        logging.disable(logging.NOTSET)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS, save(state))
    local_dir_cfg = {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    atomic_write_text(out / "open_clip_config.json", json.dumps(local_dir_cfg, indent=2) + "\n")
    return out
