"""The multi-view UNet (MVDream §3.1-3.2): SD's UNet with 3D self-attention and a camera embedding.

Reads top to bottom: the attention processors, the model, SD's UNet made multi-view, text encoding. Loading from
disk is ``MultiViewDiffusion.from_pretrained`` (models/pipeline.py), the one loader of every stage.

- 3D (multi-view) self-attention: the V views of one object share one self-attention. The processor reshapes
  the tokens ``(b v) l c -> b (v l) c`` around attn1 only, so every view attends to the tokens of all views
  with SD's own q/k/v weights (paper §3.1: "inflate" 2D self-attention, no new weights). Cross-attention (attn2)
  keeps plain attention: each view reads the text on its own. ``num_views`` travels with each call
  (``cross_attention_kwargs``), so gradient checkpointing recomputes with the same value.
- Camera: diffusers ``class_embed_type="projection"`` with 16 inputs is MVDream's camera MLP (Linear -> SiLU
  -> Linear) added to the time embedding (paper §3.2, "added to the time embedding" was their best variant).
  Only its last layer is zero-initialised, so at init the model equals SD (docs/design.md §6).
- 2D batches (paper §3.3: 30% LAION) carry no camera. With a class embedding diffusers raises on
  ``class_labels=None``; MVDream's own UNet simply skips the camera term when ``camera is None``, so
  ``MultiViewUNet.get_class_embed`` returns no class embedding then. A fake camera (zeros) would NOT be
  equivalent: the MLP's first layer has a bias, so zeros still shift the time embedding.
- Ablations (paper §5.1): a UNet whose ``config.json`` has ``multiview_attention: false`` attends within each
  image only, one with ``camera_embedding: false`` ignores the cameras it is given. They are written only when
  false (``set_ablation``), so every other model's config is diffusers' own, and every consumer (fit, sample,
  SDS, eval) honours them through ``forward``.
"""

from __future__ import annotations

import math

import torch
from diffusers import ModelMixin as ModelMixin  # noqa: F401  (read by diffusers' pipeline loader, see below)
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from mvforge.errors import UserError

# DiffusionPipeline.from_pretrained loads a component recorded as ["mvforge.models.model", "MultiViewUNet"] by
# looking its loading base classes (ModelMixin, ...) up as attributes of this module: keep ModelMixin imported.

CAMERA_DIM = 16
"""MVDream camera embedding input: the 4x4 c2w with unit translation, flattened (docs/design.md §3)."""

EMA_CONFIG_KEYS = frozenset(
    {"decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step", "use_ema_warmup"}
)
"""Keys diffusers' ``EMAModel.save_pretrained`` adds to ``unet_ema/config.json`` (its averaging state)."""

ABLATION_KEYS = ("multiview_attention", "camera_embedding")
"""``config.json`` keys of a §5.1 ablation model (both default true); see the module docstring."""


# ---------------------------------------------------------------- processors
class MultiViewAttnProcessor(AttnProcessor2_0):
    """Self-attention over the tokens of all ``num_views`` views of an object; no weights of its own (attn1).

    ``num_views`` arrives with each call as a keyword (``cross_attention_kwargs={"num_views": v}`` of
    ``UNet2DConditionModel.forward``), never as processor state: diffusers' gradient checkpointing
    (``Transformer2DModel`` checkpoints each block with ``cross_attention_kwargs`` among its saved arguments)
    replays the block in backward with the same value (state reset after forward would make the
    recomputation run with one view, and torch raised ``CheckpointError``). With ``num_views == 1`` it is
    exactly the plain SDPA processor.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        v = num_views
        if v == 1:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("MultiViewAttnProcessor is for self-attention (attn1) on (batch, tokens, dim)")
        bv, n, c = hidden_states.shape
        if bv % v:
            raise ValueError(f"batch {bv} is not a multiple of num_views {v}")
        # (b v) l c -> b (v l) c: callers flatten (B, V, ...) to (B*V, ...), views of an object are adjacent.
        x = hidden_states.reshape(bv // v, v * n, c)
        out = super().__call__(attn, x, None, None, temb)
        return out.reshape(bv, n, c)


class CrossAttnProcessor(AttnProcessor2_0):
    """attn2 (text cross-attention): each view reads the text on its own, so ``num_views`` is accepted and
    unused. Accepting it keeps diffusers from warning "cross_attention_kwargs ['num_views'] are not expected"
    on every call (it inspects the processor's signature)."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_multiview_attention(unet: UNet2DConditionModel) -> None:
    """Give every attn1 the multi-view processor and every other attention the plain one (both stateless)."""
    # set_attn_processor(dict) needs every key (docs/design.md §6).
    procs = {
        name: (MultiViewAttnProcessor() if name.endswith("attn1.processor") else CrossAttnProcessor())
        for name in unet.attn_processors
    }
    unet.set_attn_processor(procs)


# ---------------------------------------------------------------- model
class MultiViewUNet(UNet2DConditionModel):
    """SD's UNet with multi-view self-attention and an optional camera embedding.

    ``forward(sample, timestep, encoder_hidden_states, cameras=None, num_views=1)``: ``sample`` (B*V, C, h, w)
    float with the V views of an object contiguous; ``timestep`` (B*V,) or a scalar; ``encoder_hidden_states``
    (B*V, 77, D); ``cameras`` (B*V, 16) MVDream embeddings or None (a 2D batch). Returns the prediction
    (B*V, C, h, w). The weights and config are a standard ``UNet2DConditionModel``'s, so vanilla diffusers
    loads a saved ``unet/``; the multi-view behaviour is the processors (``install_multiview_attention``).
    """

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' split of a config into constructor arguments / unused / hidden keys, with the EMA state
        (``EMA_CONFIG_KEYS``) moved to the unused ones: loading ``unet_ema/`` then neither warns that they are
        ignored nor copies them into the model's config (and from there into every pipeline saved from it),
        and ``EMAModel.from_pretrained`` still receives them as unused keys to resume the average."""
        ema = {k: v for k, v in config_dict.items() if k in EMA_CONFIG_KEYS}
        ablation = {k: v for k, v in config_dict.items() if k in ABLATION_KEYS}
        rest = {k: v for k, v in config_dict.items() if k not in EMA_CONFIG_KEYS and k not in ABLATION_KEYS}
        init, unused, hidden = super().extract_init_dict(rest, **kwargs)
        # Hidden keys are registered to the loaded model's config (so saved again) without a warning.
        return init, {**unused, **ema}, {**hidden, **ablation}

    @property
    def multiview_attention(self) -> bool:
        """False for the per-image-attention ablation (paper §5.1): ``num_views`` then never joins views."""
        return bool(self.config.get("multiview_attention", True))

    @property
    def camera_embedding(self) -> bool:
        """False for the no-camera ablation (paper §5.1): ``forward`` then drops the cameras."""
        return bool(self.config.get("camera_embedding", True))

    def set_ablation(self, *, multiview_attention: bool = True, camera_embedding: bool = True) -> None:
        """Make this UNet a §5.1 ablation (recorded in its config, so saved and loaded with it). Raises
        ValueError when asked to undo an ablation the weights were trained under."""
        for key, value in (
            ("multiview_attention", multiview_attention),
            ("camera_embedding", camera_embedding),
        ):
            if not value:
                self.register_to_config(**{key: False})
            elif not getattr(self, key):
                raise ValueError(f"this UNet was trained with {key} = false; it cannot be switched back on")

    def get_class_embed(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        if class_labels is None:  # 2D batch: no camera term (see module docstring)
            return None
        return super().get_class_embed(sample=sample, class_labels=class_labels)

    def has_multiview_attention(self) -> bool:
        """Whether the first self-attention has the multi-view processor (a short walk, stops at the first)."""
        for m in self.modules():
            if isinstance(m, Attention) and not m.is_cross_attention:
                return isinstance(m.processor, MultiViewAttnProcessor)
        return False

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        cameras: torch.Tensor | None = None,
        num_views: int = 1,
    ) -> torch.Tensor:
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if not self.has_multiview_attention():  # e.g. after a plain from_pretrained / set_attn_processor
            install_multiview_attention(self)
        return super().forward(
            sample,
            timestep,
            encoder_hidden_states,
            class_labels=cameras if self.camera_embedding else None,
            cross_attention_kwargs={"num_views": num_views if self.multiview_attention else 1},
            return_dict=False,
        )[0]


def init_camera(unet: UNet2DConditionModel, seed: int = 0) -> None:
    """Seeded init of the new camera MLP: PyTorch's Linear init for the first layer, zeros for the last, so at
    init the camera changes nothing (docs/design.md §6). Seeded so two loads of SD give the same model (exact
    resume and reproducible runs would otherwise differ in the first layer)."""
    g = torch.Generator().manual_seed(seed)
    first, last = unet.class_embedding.linear_1, unet.class_embedding.linear_2
    bound = 1.0 / math.sqrt(first.in_features)
    with torch.no_grad():
        first.weight.uniform_(-bound, bound, generator=g)
        first.bias.uniform_(-bound, bound, generator=g)
        last.weight.zero_()
        last.bias.zero_()


# ---------------------------------------------------------------- from SD, text encoding
def multiview_from_sd(base: UNet2DConditionModel) -> MultiViewUNet:
    """SD's UNet with the camera MLP added (seeded first layer, zero last layer: equal to ``base`` at init)."""
    # Private keys out: a fresh model's "_use_default_values" lists class_embed_type and would undo the update.
    cfg = {k: v for k, v in base.config.items() if not k.startswith("_")}
    cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
    unet = MultiViewUNet.from_config(cfg)
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise UserError("the UNet's weights do not match its config; re-save the model")
    init_camera(unet)
    install_multiview_attention(unet)
    return unet


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids (N, 77) int64: BOS, BPE tokens, EOS, then the tokenizer's pad id (0 for SD 2.x and OpenCLIP:
    SD's cross-attention reads all 77 positions, so the pad id changes the
    conditioning); truncated to 77 with EOS kept last.

    ``split_special_tokens``: the pad token "!" is a special token of SD 2.x's saved tokenizer, and transformers
    would split every "!" in a prompt off as id 0 ("!!" is one BPE token for open_clip). With it the ids equal
    open_clip's ``tokenize`` (tested).
    """
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        split_special_tokens=True,
        return_tensors="pt",
    ).input_ids


def encode_text(tokenizer, text_encoder, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """Text-encoder hidden states (N, 77, D) of N prompts (ids from ``tokenize``)."""
    return text_encoder(tokenize(tokenizer, prompts).to(device))[0]
