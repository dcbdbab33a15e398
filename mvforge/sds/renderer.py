"""Volume renderer of the SDS field (docs/design.md §10.5): bounding-sphere rays, stratified samples, alpha
compositing.

The renderer is composed of the objects passed to its constructor (field, background), typed, in the spirit of
threestudio's ``nerf-volume-renderer`` (``threestudio/models/renderers/nerf_volume_renderer.py``, which marches
with nerfacc 0.5.2's ``OccGridEstimator``; docs/design.md §10.5) without its string registry. Per ray:

1. intersect the sphere of radius ``sqrt(3) * field.radius`` that bounds the field's box: [t_near, t_far];
2. ``samples_per_ray`` stratified samples, one per equal bin (uniform jitter inside the bin when a generator is
   given, the bin centre otherwise);
3. samples in cells the occupancy grid marks empty are skipped (nerfacc's idea, in plain PyTorch);
4. per-sample pruning (``prune_samples``, the official rule): the density of the samples left is evaluated
   without gradients, and a sample is dropped when its alpha is below min(0.01, the grid's mean occupancy) or
   the transmittance in front of it is below 1e-4; the field is evaluated with gradients (and normals) only on
   the samples that remain, and only they are composited;
5. alpha_i = 1 - exp(-sigma_i * delta), T_i = prod_{j<i} (1 - alpha_j), w_i = T_i * alpha_i;
   colour = sum w_i c_i + (1 - opacity) * background, opacity = sum w_i, depth = sum w_i t_i (not divided by
   the opacity: the expectation with the background at t = 0), normal = sum w_i n_i.

Rays go through in chunks of ``ray_chunk``, so the field's working memory is fixed by ray_chunk x
samples_per_ray. With gradients, keeping every chunk's graph until the backward would make memory grow with the
render's size again (at 256² x 4 views x 16 samples the pure-PyTorch hash grid's graph with analytic normals is
~40 GB); so when a render needs more than one chunk, each chunk is run under activation checkpointing
(``checkpoint_chunks``, on by default): only its outputs are kept and it is recomputed, one chunk at a time,
during the backward (about one more forward of the field per step). Lower both knobs to fit a small machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mvforge.models.camera_batch import get_rays
from mvforge.sds.cameras import CameraBatch
from mvforge.sds.config import RendererConfig
from mvforge.sds.material import Shading, shade


@dataclass
class RenderOutput:
    """Renders of N views at H x W, channels last, float32."""

    rgb: torch.Tensor
    """(N, H, W, 3) colour in [0, 1] composited over the background."""
    opacity: torch.Tensor
    """(N, H, W, 1) accumulated opacity in [0, 1]."""
    depth: torch.Tensor
    """(N, H, W, 1) expected ray distance sum w_i t_i, field units."""
    normal: torch.Tensor | None
    """(N, H, W, 3) accumulated world normals (None when the shading needed none)."""
    orient: torch.Tensor | None
    """(N, H, W, 1) sum_i sg(w_i) max(n_i . d, 0)^2 (the orientation loss per ray), or None."""
    samples: torch.Tensor | None = None
    """(N, H, W, 1) samples per ray the field was evaluated at with gradients (after skipping and pruning)."""


class VolumeRenderer(nn.Module):
    """Renders ``field`` (density/albedo/normals of points) over ``background`` (colour of directions).

    ``field`` is any module with ``radius`` and ``forward(points, with_normals) -> (density, albedo,
    normals)`` (see :class:`mvforge.sds.field.HashGridField`). The occupancy grid is a buffer of this module,
    saved and restored with its state dict.
    """

    def __init__(self, field: nn.Module, background: nn.Module | None, cfg: RendererConfig):
        super().__init__()
        self.field, self.background, self.cfg = field, background, cfg
        self.radius = float(field.radius)
        self.bound = math.sqrt(3.0) * self.radius
        res = cfg.occupancy_resolution
        self.register_buffer("occupancy_density", torch.full((res, res, res), float("inf")))
        self.register_buffer("occupied", torch.ones((res, res, res), dtype=torch.bool))

    # -- occupancy grid ---------------------------------------------------------------------------------------

    def _cell_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = self.cfg.occupancy_resolution
        unit = (points / self.radius + 1.0) / 2.0
        inside = ((unit >= 0) & (unit <= 1)).all(-1)
        idx = (unit * res).long().clamp(0, res - 1)
        return idx, inside

    def _grid_step(self) -> float:
        """The step the grid's occupancy is measured in: the longest chord over samples_per_ray (nerfacc's
        render_step_size = 1.732 * 2 * radius / num_samples_per_ray)."""
        return 2.0 * self.bound / self.cfg.samples_per_ray

    def mean_occupancy(self) -> float:
        """Mean over the grid's cells of density * step (nerfacc's ``occs.mean()``); inf before the first update."""
        grid = self.occupancy_density
        if bool(torch.isinf(grid).any()):
            return math.inf
        return float(grid.mean()) * self._grid_step()

    @torch.no_grad()
    def update_occupancy(self, step: int, generator: torch.Generator | None = None) -> None:
        """Refresh the grid at ``step`` (call every step; it acts every ``occupancy_update_every`` steps).

        As nerfacc's ``OccGridEstimator._update``: cells get the density at a random point inside them; the
        running value decays by ``occupancy_decay`` and takes the max with the new one. Before
        ``occupancy_warmup_steps`` all cells are refreshed, afterwards a random quarter of the cells plus up to as
        many occupied ones. A cell's occupancy is density * step; it is occupied when that exceeds
        min(``occupancy_threshold``, the mean occupancy), or (mvforge) when a neighbouring cell is.
        """
        cfg = self.cfg
        if cfg.occupancy_update_every <= 0 or step % cfg.occupancy_update_every != 0:
            return
        res = cfg.occupancy_resolution
        device = self.occupied.device
        n = res**3
        if step < cfg.occupancy_warmup_steps:
            cells = torch.arange(n, device=device)
        else:
            quarter = max(n // 4, 1)
            uniform = torch.randperm(n, generator=generator, device="cpu")[:quarter]
            occupied = self.occupied.view(-1).nonzero()[:, 0].cpu()
            if len(occupied) > quarter:
                occupied = occupied[torch.randint(len(occupied), (quarter,), generator=generator)]
            cells = torch.unique(torch.cat([uniform, occupied])).to(device)
        ijk = torch.stack([cells // (res * res), cells // res % res, cells % res], dim=-1).float()
        jitter = torch.rand(ijk.shape, generator=generator, device="cpu").to(device)
        points = ((ijk + jitter) / res * 2.0 - 1.0) * self.radius
        dens = torch.cat([self.field.density(p) for p in points.split(self.cfg.ray_chunk)])
        grid = self.occupancy_density.view(-1)
        old = torch.where(torch.isinf(grid[cells]), torch.zeros_like(dens), grid[cells] * cfg.occupancy_decay)
        grid[cells] = torch.maximum(old, dens)
        known = ~torch.isinf(grid)
        occupancy = grid.clamp_max(1e6) * self._grid_step()
        threshold = min(cfg.occupancy_threshold, self.mean_occupancy())
        occ = (~known | (occupancy > threshold)).view(1, 1, res, res, res).float()
        # Dilate by one cell: one random probe per cell can miss a surface that only grazes the cell, and a
        # wrongly empty cell cuts the surface out of every render until the next update.
        occ = torch.nn.functional.max_pool3d(occ, kernel_size=3, stride=1, padding=1)
        self.occupied.copy_(occ.view(res, res, res) > 0)

    # -- rendering --------------------------------------------------------------------------------------------

    def _near_far(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = (rays_o * rays_d).sum(-1)
        c = (rays_o * rays_o).sum(-1) - self.bound**2
        disc = (b * b - c).clamp_min(0.0)
        root = disc.sqrt()
        near = (-b - root).clamp_min(0.0)
        far = (-b + root).clamp_min(0.0)
        miss = (b * b - c) <= 0
        far = torch.where(miss, near, far)
        return near, far

    def _density(self, points: torch.Tensor) -> torch.Tensor:
        density = getattr(self.field, "density", None)
        return density(points) if density is not None else self.field(points, with_normals=False)[0]

    def _samples(
        self, rays_o: torch.Tensor, rays_d: torch.Tensor, jitter: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample distances t (R, S), points (R, S, 3) and the bin width delta (R,) of the rays (steps 1-2)."""
        n_rays, n_samples = rays_o.shape[0], self.cfg.samples_per_ray
        near, far = self._near_far(rays_o, rays_d)
        delta = (far - near) / n_samples  # (R,) equal bins
        offset = jitter if jitter is not None else torch.full((n_rays, n_samples), 0.5, device=rays_o.device)
        steps = torch.arange(n_samples, device=rays_o.device, dtype=rays_o.dtype)
        t = near[:, None] + (steps[None] + offset) * delta[:, None]  # (R, S)
        points = rays_o[:, None, :] + t[..., None] * rays_d[:, None, :]  # (R, S, 3)
        return t, points, delta

    @torch.no_grad()
    def _keep(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        jitter: torch.Tensor | None,
        alpha_threshold: float | None,
    ) -> torch.Tensor:
        """(R, S) mask of the samples the field is evaluated at: inside the box, in an occupied cell (step 3)
        and, with ``alpha_threshold`` given, not dropped by the per-sample pruning (step 4)."""
        _, points, delta = self._samples(rays_o, rays_d, jitter)
        cell, inside = self._cell_index(points)
        keep = inside & self.occupied[cell[..., 0], cell[..., 1], cell[..., 2]] & (delta[:, None] > 0)
        if alpha_threshold is not None:
            keep = self._prune(points, keep, delta, alpha_threshold)
        return keep

    @torch.no_grad()
    def _prune(
        self, points: torch.Tensor, keep: torch.Tensor, delta: torch.Tensor, alpha_threshold: float
    ) -> torch.Tensor:
        """``keep`` (R, S) without the samples the official marcher drops (nerfacc ``render_visibility_from_alpha``):
        alpha below ``alpha_threshold`` or transmittance in front below ``prune_transmittance``. The
        transmittance is that of every sample ``keep`` holds, the dropped low-alpha ones included, as nerfacc
        computes it before masking."""
        sigma = torch.zeros(keep.shape, device=points.device, dtype=points.dtype)
        flat = points[keep]
        if len(flat):
            sigma[keep] = self._density(flat).to(sigma.dtype)
        alpha = 1.0 - torch.exp(-sigma * delta[:, None])
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=-1), -1)
        keep = keep & (trans >= self.cfg.prune_transmittance)
        if alpha_threshold > 0:
            keep = keep & (alpha >= alpha_threshold)
        return keep

    def _render_chunk(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        light: torch.Tensor,
        shading: Shading,
        bg_color: torch.Tensor | None,
        jitter: torch.Tensor | None,
        with_orient: bool,
        keep: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Step 5 on the samples ``keep`` (R, S) selects (from :meth:`_keep`)."""
        n_rays, n_samples = rays_o.shape[0], self.cfg.samples_per_ray
        t, points, delta = self._samples(rays_o, rays_d, jitter)

        flat_pts = points[keep]
        need_normals = shading.needs_normals or with_orient
        density_k, albedo_k, normal_k = self.field(flat_pts, with_normals=need_normals)
        dirs_k = rays_d[:, None, :].expand(-1, n_samples, -1)[keep]
        light_k = light[:, None, :].expand(-1, n_samples, -1)[keep]
        color_k = shade(albedo_k, normal_k, flat_pts, light_k, shading)

        sigma = torch.zeros((n_rays, n_samples), device=rays_o.device, dtype=density_k.dtype)
        sigma = sigma.index_put((keep.nonzero(as_tuple=True)), density_k)
        alpha = 1.0 - torch.exp(-sigma * delta[:, None])
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=-1), -1)
        weights = alpha * trans[:, :-1]  # (R, S)
        w_k = weights[keep]

        def accumulate(values_k: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((n_rays, values_k.shape[-1]), device=rays_o.device, dtype=values_k.dtype)
            ray_of_sample = keep.nonzero(as_tuple=True)[0]
            return out.index_add(0, ray_of_sample, w_k[:, None] * values_k)

        opacity = weights.sum(-1, keepdim=True)
        rgb = accumulate(color_k)
        if bg_color is not None:
            bg = bg_color.to(rgb.dtype).expand(n_rays, 3)
        elif self.background is not None:
            bg = self.background(rays_d)
        else:
            bg = torch.zeros_like(rgb)
        out = {
            "rgb": rgb + (1.0 - opacity) * bg,
            "opacity": opacity,
            "depth": (weights * t).sum(-1, keepdim=True),
            "samples": keep.sum(-1, keepdim=True).to(rgb.dtype),
        }
        if normal_k is not None:
            out["normal"] = accumulate(normal_k)
            if with_orient:
                facing = (normal_k * dirs_k).sum(-1, keepdim=True).clamp_min(0.0) ** 2
                ray_of_sample = keep.nonzero(as_tuple=True)[0]
                out["orient"] = torch.zeros((n_rays, 1), device=rays_o.device).index_add(
                    0, ray_of_sample, w_k.detach()[:, None] * facing
                )
        return out

    def render_rays(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        light: torch.Tensor,
        shading: Shading,
        bg_color: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        with_orient: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Rays (R, 3) origins, (R, 3) unit directions, (R, 3) light positions -> per-ray outputs.

        Returns ``rgb`` (R, 3), ``opacity`` (R, 1), ``depth`` (R, 1), ``samples`` (R, 1) and ``normal``
        (R, 3) / ``orient`` (R, 1) when normals were computed. ``bg_color`` (3,) replaces the background MLP;
        ``generator`` jitters the samples inside their bins (training), none places them at bin centres
        (evaluation). Samples are pruned (``prune_samples``) in training and evaluation alike, as the official
        renderer does.
        """
        jitter = None
        if generator is not None:
            jitter = torch.rand((rays_o.shape[0], self.cfg.samples_per_ray), generator=generator)
            jitter = jitter.to(rays_o.device)
        # nerfacc's alpha_thre = min(0.01, occs.mean()), read once per render (the grid does not change within one)
        alpha_threshold = None
        if self.cfg.prune_samples:
            alpha_threshold = min(self.cfg.prune_alpha_threshold, self.mean_occupancy())
        chunk = self.cfg.ray_chunk
        render_chunk = self._render_chunk
        if (
            self.cfg.checkpoint_chunks
            and rays_o.shape[0] > chunk
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in self.parameters())
        ):
            # Memory fixed per chunk with gradients (module docstring). The recomputation replays the same
            # samples: jitter is drawn above and the sample mask (occupancy, pruning) is computed once, outside.
            def render_chunk(*args):
                return checkpoint(self._render_chunk, *args, use_reentrant=False)

        chunks = []
        for start in range(0, rays_o.shape[0], chunk):
            sl = slice(start, start + chunk)
            chunk_jitter = None if jitter is None else jitter[sl]
            keep = self._keep(rays_o[sl], rays_d[sl], chunk_jitter, alpha_threshold)
            chunks.append(
                render_chunk(
                    rays_o[sl], rays_d[sl], light[sl], shading, bg_color, chunk_jitter, with_orient, keep
                )
            )
        return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}

    def render(
        self,
        cams: CameraBatch,
        resolution: int,
        shading: Shading,
        bg_color: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        with_orient: bool = False,
    ) -> RenderOutput:
        """Render every view of ``cams`` (on this module's device) at ``resolution`` x ``resolution``."""
        rays_o, rays_d = get_rays(cams.c2w, cams.fov_deg, resolution, resolution)
        n, h, w = rays_o.shape[:3]
        light = cams.light_position[:, None, None, :].expand(n, h, w, 3)
        out = self.render_rays(
            rays_o.reshape(-1, 3),
            rays_d.reshape(-1, 3),
            light.reshape(-1, 3),
            shading,
            bg_color=bg_color,
            generator=generator,
            with_orient=with_orient,
        )

        def img(key: str) -> torch.Tensor | None:
            return out[key].reshape(n, h, w, -1) if key in out else None

        return RenderOutput(
            img("rgb"), img("opacity"), img("depth"), img("normal"), img("orient"), img("samples")
        )
