"""The device resolver of the torch stages: filter, train (fit, dreambooth), sample, sds and eval."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mvforge.errors import UserError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` → a ``torch.device``.

    ``auto`` picks the first CUDA GPU when one is visible, else the CPU (never MPS: several ops the UNet needs
    fall back to the CPU there silently). Raises UserError for a GPU that is not visible or an unknown name.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} requested but no CUDA GPU is visible; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name}: only {torch.cuda.device_count()} CUDA GPU(s) visible; use cuda:0"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name} requested but MPS is not available; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def cpu_foreach(device: torch.device) -> bool | None:
    """``foreach`` for torch's optimizers and gradient clipping on ``device``: True on the CPU, whose default is a
    Python loop over the tensors (the foreach kernels give the same numbers to the bit, in less time:
    docs/benchmarks.md "The known-answer fixture's time"), else None (torch's own choice)."""
    return True if device.type == "cpu" else None
