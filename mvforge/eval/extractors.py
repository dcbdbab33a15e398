"""Feature extractors of `mvtrain eval`, from local weight files only (nothing is downloaded, design §6).

Two roles, each a small protocol so a test or a caller can inject its own:

- ``ImageFeatures``: images -> (pool features (N, D), class logits (N, K)) for FID/KID and IS. The real one is
  torchvision's Inception v3 (ImageNet weights file ``inception_v3_google-0cc3c7bd.pth``, 2048-d pool, 1000
  logits); ``TinyFeatures`` is a seeded random projection for tests and the demo (its numbers mean nothing).
  torchvision's Inception is not the TF graph pytorch-fid / torch-fidelity use, so FID values differ from theirs.
- ``ClipEmbedder``: images and texts -> embeddings for the CLIP score and the consistency figure. ``OpenClip``
  loads an open_clip model through ``mvforge.models.clip.load_clip``, the loader of `mvdata filter` (design §1),
  local weights only: ``local-dir:DIR`` (an open_clip folder with open_clip_config.json), or a model name plus a
  checkpoint file (``--clip-model-config`` for a custom JSON).

Images are PIL RGB, already composited and resized by the caller (``mvforge.eval.run.prepare``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from mvforge.errors import UserError

BATCH = 16


class ImageFeatures(Protocol):
    name: str

    def __call__(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D) float64, logits (N, K) float64) of N PIL RGB images."""
        ...


class ClipEmbedder(Protocol):
    name: str

    def images(self, images: list) -> np.ndarray:
        """(N, D) float64 image embeddings of N PIL RGB images."""
        ...

    def texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float64 text embeddings."""
        ...


class TinyFeatures:
    """A seeded random projection of 8 x 8 RGB thumbnails: 32-d tanh features, 10 logits. For tests and the
    offline demo only: it exercises every code path, but its FID/IS measure nothing about image quality."""

    def __init__(self, seed: int = 0, dim: int = 32, classes: int = 10):
        rng = np.random.default_rng(seed)
        self.w1 = rng.standard_normal((8 * 8 * 3, dim)) / np.sqrt(8 * 8 * 3)
        self.w2 = rng.standard_normal((dim, classes)) * 3.0
        self.name = f"tiny-random(seed={seed}; numbers mean nothing)"

    def __call__(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack(
            [np.asarray(im.convert("RGB").resize((8, 8)), dtype=np.float64).ravel() for im in images]
        )
        f = np.tanh((x / 127.5 - 1.0) @ self.w1 * 3.0)
        return f, f @ self.w2


class InceptionFeatures:
    """torchvision's Inception v3 from a local ImageNet weights file: 299 px bilinear input scaled to [-1, 1]
    (what the Google weights expect; torchvision's ``transform_input`` does the same from ImageNet-normalised
    input), the 2048-d average-pool output as features, the 1000 ImageNet logits for IS."""

    def __init__(self, weights: str | Path | None, device: str = "cpu"):
        import torch
        from torchvision.models import inception_v3

        if weights is None or not Path(weights).is_file():
            raise UserError(
                f"Inception weights {weights or '(none given)'} not found; pass --inception-weights FILE "
                "(torchvision's inception_v3_google-0cc3c7bd.pth) or --features tiny for a smoke test"
            )
        model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as e:  # a wrong file: say which and why in one line
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"{weights} is not torchvision inception_v3 weights ({first}); pass inception_v3_google-*.pth"
            ) from None
        self.model = model.eval().to(device)
        self.device = device
        self.name = f"torchvision inception_v3 ({Path(weights).name})"
        self._pool = None
        self.model.avgpool.register_forward_hook(lambda _m, _i, out: setattr(self, "_pool", out))

    def __call__(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        feats, logits = [], []
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                x = torch.from_numpy(
                    np.stack([np.asarray(im.convert("RGB")) for im in images[i : i + BATCH]])
                )
                x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(self.device)
                x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
                out = self.model(x)
                feats.append(self._pool.flatten(1).double().cpu().numpy())
                logits.append(out.double().cpu().numpy())
        return np.concatenate(feats), np.concatenate(logits)


class OpenClip:
    """An open_clip model loaded from local files only; embeddings are L2-normalised."""

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        model_config: str | Path | None = None,
        device: str = "cpu",
    ):
        from mvforge.models.clip import ClipOptions, load_clip

        options = ClipOptions("--clip-pretrained", "--clip-model-config", local_only=True)
        clip = load_clip(model, pretrained, model_config, device=device, options=options)
        self.model, self.preprocess, self.tokenizer = clip.model, clip.preprocess, clip.tokenizer
        self.device = device
        self.name = f"open_clip {clip.name}" + (f" ({Path(clip.pretrained).name})" if clip.pretrained else "")

    def images(self, images: list) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                x = torch.stack([self.preprocess(im) for im in images[i : i + BATCH]]).to(self.device)
                out.append(self.model.encode_image(x, normalize=True).double().cpu().numpy())
        return np.concatenate(out)

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), BATCH):
                tok = self.tokenizer(texts[i : i + BATCH]).to(self.device)
                out.append(self.model.encode_text(tok, normalize=True).double().cpu().numpy())
        return np.concatenate(out)
