"""The 3D field optimised by SDS: a multi-resolution hash grid with small density and albedo MLPs
(docs/design.md §10.4).

Instant-NGP's encoding (Müller et al. 2022) in pure PyTorch, so the stage installs with pip alone; when
tiny-cuda-nn is importable and the field is on CUDA, ``backend="auto"`` uses its fused encoding instead (the
summary records which one ran). The density follows threestudio's ``implicit-volume`` as MVDream configures it
(``threestudio/models/geometry/implicit_volume.py``; docs/design.md §10.4): softplus(raw + blob bias), the blob
bias ``blob_density * (1 - |x| / blob_std)`` seeding a ball at the centre; albedo is a sigmoid of the albedo MLP.
Both MLPs are threestudio's ``VanillaMLP``: linear layers without biases, ReLU between them.

Coordinates are world units inside the box [-radius, radius]^3; the field is Z up like every mvforge world.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mvforge.sds.config import FieldConfig

# Instant-NGP's spatial hash primes (the first is 1 so the x coordinate is kept coherent in memory).
_PRIMES = (1, 2654435761, 805459861)
_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])  # (8, 3) offsets 0/1


def tcnn_available() -> bool:
    """True when tiny-cuda-nn imports and CUDA is available (the optional fast backend)."""
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


class HashGridTorch(nn.Module):
    """Multi-resolution hash encoding in pure PyTorch.

    Level l has resolution ``floor(base * b^l)`` with ``b = exp(ln(max/base) / (levels - 1))``; levels whose
    (res+1)^3 vertices fit into the table are indexed densely, the others by the spatial hash. Trilinear
    interpolation of the 8 corner features; table initialised U(-1e-4, 1e-4) as Instant-NGP does.
    Input (P, 3) in [0, 1] float32 -> (P, levels * features) float32.
    """

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.n_levels, self.n_features = cfg.n_levels, cfg.n_features_per_level
        self.table_size = 2**cfg.log2_hashmap_size
        growth = math.exp(math.log(cfg.max_resolution / cfg.base_resolution) / max(cfg.n_levels - 1, 1))
        self.resolutions = [int(math.floor(cfg.base_resolution * growth**lvl)) for lvl in range(cfg.n_levels)]
        sizes = [min((r + 1) ** 3, self.table_size) for r in self.resolutions]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.embeddings = nn.Parameter(torch.empty(self.offsets[-1], self.n_features).uniform_(-1e-4, 1e-4))
        self.register_buffer("_corners", _CORNERS.clone(), persistent=False)

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for lvl, res in enumerate(self.resolutions):
            pos = x * res
            base = torch.floor(pos).long()
            frac = pos - base  # (P, 3)
            corners = base[:, None, :] + self._corners[None]  # (P, 8, 3)
            size = self.offsets[lvl + 1] - self.offsets[lvl]
            if (res + 1) ** 3 <= self.table_size:
                c = corners.clamp(0, res)
                idx = (c[..., 0] * (res + 1) + c[..., 1]) * (res + 1) + c[..., 2]
            else:
                idx = corners[..., 0] * _PRIMES[0]
                idx = torch.bitwise_xor(idx, corners[..., 1] * _PRIMES[1])
                idx = torch.bitwise_xor(idx, corners[..., 2] * _PRIMES[2])
                idx = idx % size
            vals = self.embeddings[idx + self.offsets[lvl]]  # (P, 8, F)
            w = torch.where(self._corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
            feats.append((w[..., None] * vals).sum(1))
        return torch.cat(feats, dim=-1)


class HashGridTcnn(nn.Module):
    """tiny-cuda-nn's fused hash encoding with the same settings (used only when importable on CUDA)."""

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        import tinycudann as tcnn

        growth = math.exp(math.log(cfg.max_resolution / cfg.base_resolution) / max(cfg.n_levels - 1, 1))
        self.encoding = tcnn.Encoding(
            3,
            {
                "otype": "HashGrid",
                "n_levels": cfg.n_levels,
                "n_features_per_level": cfg.n_features_per_level,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": growth,
            },
            dtype=torch.float32,
        )
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x).float()


def _mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """threestudio's VanillaMLP (networks.py ``make_linear``: ``nn.Linear(dim_in, dim_out, bias=False)``)."""
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden, bias=False), nn.ReLU(inplace=True)]
        width = hidden
    mods.append(nn.Linear(width, n_out, bias=False))
    return nn.Sequential(*mods)


class HashGridField(nn.Module):
    """Density and albedo of points in the box [-radius, radius]^3.

    ``backend`` is the encoding that runs ("torch" or "tcnn"). Parameter groups for the optimiser:
    ``encoding`` (the grid) and ``density_mlp`` + ``albedo_mlp`` (the MLPs), see :meth:`param_groups`.
    """

    def __init__(self, cfg: FieldConfig):
        super().__init__()
        self.cfg = cfg
        self.radius = cfg.radius
        use_tcnn = cfg.backend == "tcnn" or (cfg.backend == "auto" and tcnn_available())
        if cfg.backend == "tcnn" and not tcnn_available():
            from mvforge.errors import UserError

            raise UserError("field.backend=tcnn needs tinycudann and CUDA; set field.backend=auto or torch")
        self.backend = "tcnn" if use_tcnn else "torch"
        self.encoding = HashGridTcnn(cfg) if use_tcnn else HashGridTorch(cfg)
        n = self.encoding.n_output_dims
        self.density_mlp = _mlp(n, 1, cfg.mlp_hidden, cfg.mlp_layers)
        self.albedo_mlp = _mlp(n, 3, cfg.mlp_hidden, cfg.mlp_layers)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by learning-rate group: ``grid`` and ``mlp``."""
        return {
            "grid": list(self.encoding.parameters()),
            "mlp": list(self.density_mlp.parameters()) + list(self.albedo_mlp.parameters()),
        }

    def _features(self, points: torch.Tensor) -> torch.Tensor:
        unit = ((points / self.radius + 1.0) / 2.0).clamp(0.0, 1.0)
        return self.encoding(unit)

    def _density(self, points: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        raw = self.density_mlp(feats)[..., 0]
        blob = self.cfg.blob_density * (1.0 - points.norm(dim=-1) / self.cfg.blob_std)
        return F.softplus(raw + blob)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points (P, 3) world units -> density (P,) float32 >= 0, per unit length."""
        return self._density(points, self._features(points))

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """points (P, 3) -> albedo (P, 3) in [0, 1]."""
        return torch.sigmoid(self.albedo_mlp(self._features(points)))

    def forward(
        self, points: torch.Tensor, with_normals: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """points (P, 3) -> density (P,), albedo (P, 3) in [0, 1], normals (P, 3) unit or None.

        Normals are -grad(density) normalised: by autograd (``normals="analytic"``, differentiable with
        create_graph so the orientation loss trains the field) or by central differences.
        """
        if with_normals and self.cfg.normals == "analytic":
            keep_graph = torch.is_grad_enabled()
            with torch.enable_grad():
                pts = points if points.requires_grad else points.detach().requires_grad_(True)
                feats = self._features(pts)
                density = self._density(pts, feats)
                grad = torch.autograd.grad(density.sum(), pts, create_graph=keep_graph)[0]
            normals = F.normalize(-grad, dim=-1, eps=1e-8)
            if not keep_graph:  # evaluation: drop the graph built only for the gradient
                feats, density, normals = feats.detach(), density.detach(), normals.detach()
        else:
            feats = self._features(points)
            density = self._density(points, feats)
            normals = None
            if with_normals:
                eps = self.cfg.finite_difference_eps
                offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
                shifted = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)
                d = self.density(shifted.reshape(-1, 3)).reshape(-1, 6)
                grad = (d[:, :3] - d[:, 3:]) / (2 * eps)
                normals = F.normalize(-grad, dim=-1, eps=1e-8)
        albedo = torch.sigmoid(self.albedo_mlp(feats))
        return density, albedo, normals
