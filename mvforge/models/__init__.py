"""The shared multi-view diffusion layer (docs/design.md §1): used by train, sds, eval and `mvtrain sample`.

``from mvforge.models import MultiViewDiffusion, MultiViewUNet, resolve_model``; a model is loaded with
``MultiViewDiffusion.from_pretrained``. The names load on first use (torch and diffusers are heavy;
``mvforge.models.resolve`` and ``camera_batch`` need neither).
"""

from __future__ import annotations

_EXPORTS = {
    "MultiViewDiffusion": "mvforge.models.pipeline",
    "MVDreamPipeline": "mvforge.models.pipeline",
    "MultiViewUNet": "mvforge.models.model",
    "resolve_model": "mvforge.models.resolve",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mvforge.models' has no attribute {name!r}")
