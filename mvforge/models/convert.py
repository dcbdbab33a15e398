"""The released MVDream checkpoints (LDM layout) as mvforge pipeline directories (docs/design.md §10.10).

``convert_checkpoint(src, out)`` reads ``sd-v2.1-base-4view.pt`` / ``sd-v1.5-4view.pt`` (or any checkpoint of
that layout, described by an LDM yaml) and writes a ``MVDreamPipeline`` directory that
``MultiViewDiffusion.from_pretrained`` and ``mvtrain sample --model`` load.

- Loading: ``torch.load(weights_only=True, mmap=True)`` or safetensors; nothing in the file can run code, and
  the tensors stay on disk (mmap) until a component needs them.
- Key groups of the official ``LatentDiffusionInterface`` (bytedance/MVDream ``mvdream/ldm/interface.py``):
  ``model.diffusion_model.*`` (``MultiViewUNetModel``; its ``camera_embed.{0,2}`` is renamed to LDM's
  ``label_emb.0.{0,2}`` and goes through diffusers' LDM converter as a projection class embedding),
  ``first_stage_model.*`` (VAE, diffusers' converter), ``cond_stage_model.model.*`` (OpenCLIP, SD 2.x) or
  ``cond_stage_model.transformer.*`` (HF CLIP, SD 1.x), and the 12 schedule buffers of ``register_schedule``.
  Every key is converted or dropped with a reason (``conversion.json``: the text blocks after the yaml's
  layer, the CLIP head, the 10 schedule buffers derived from ``betas``); a missing or unknown key is a
  UserError naming it. Which source key a converted tensor came from is tracked by key name (``_sources``).
  Without a yaml the official architecture is assumed, and a checkpoint of another size is told to pass its
  ``--original-config`` rather than reported as incomplete.
- Rerun: ``DONE_FILE`` (written last) records the source file's path, size and mtime, the yaml and the dtype;
  the same conversion again keeps a finished ``out`` as it is, anything else into a non-empty ``out`` is
  refused.
- One component at a time: each is converted, checked against a model built on the meta device (no weights
  allocated), cast and written as safetensors shards (``SHARD_SIZE``) before the next is read. The source's
  pages are read once through the mmap; they count in the reported peak RSS as file-backed page cache.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mvforge.errors import UserError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
CLIP_PREFIX = "cond_stage_model.transformer."

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
"""The top-level buffers of LDM's ``register_schedule``: all derived from ``betas``; the written scheduler is
checked against ``betas`` and ``alphas_cumprod``, the other ten are dropped (diffusers recomputes them)."""

DTYPES = ("fp32", "fp16", "bf16")


def _ldm_config(context_dim: int, text: dict, unet_heads: dict) -> dict:
    """The official yaml (bytedance/MVDream mvdream/configs/sd-v*.yaml) as the dict PyYAML would read."""
    unet = dict(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=context_dim,
        legacy=False,
        camera_dim=16,
        **unet_heads,
    )
    vae = dict(
        embed_dim=4,
        ddconfig=dict(
            double_z=True,
            z_channels=4,
            resolution=256,
            in_channels=3,
            out_ch=3,
            ch=128,
            ch_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_resolutions=[],
            dropout=0.0,
        ),
    )
    return {
        "model": {
            "params": dict(
                linear_start=0.00085,
                linear_end=0.012,
                timesteps=1000,
                scale_factor=0.18215,
                parameterization="eps",
                unet_config={"params": unet},
                first_stage_config={"params": vae},
                cond_stage_config=text,
            )
        }
    }


OFFICIAL_CONFIGS = {
    "sd-v2-base": _ldm_config(
        1024,
        {
            "target": "mvdream.ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate"},
        },
        {"num_head_channels": 64, "use_linear_in_transformer": True},
    ),
    "sd-v1": _ldm_config(
        768, {"target": "mvdream.ldm.modules.encoders.modules.FrozenCLIPEmbedder"}, {"num_heads": 8}
    ),
}
"""sd-v2-base.yaml (SD 2.1 base, OpenCLIP ViT-H/14 penultimate) and sd-v1.yaml (SD 1.5, CLIP ViT-L/14 last)."""


@dataclass
class ConvertReport:
    """What ``convert_checkpoint`` did: ``out`` (the pipeline directory), ``architecture`` (official config
    name or the yaml's path), ``converted`` (source keys per component), ``dropped`` (source key -> reason),
    ``seconds`` and ``peak_rss_mb`` (this process's peak resident memory, MiB); ``leftovers`` (below);
    ``kept``: ``out`` already held this conversion and was kept as it is (the counts are those its
    ``conversion.json`` records)."""

    out: Path
    architecture: str
    converted: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    kept: bool = False
    leftovers: list[Path] = field(default_factory=list)
    """Temporary copies of ``out`` that killed conversions left, removed before this one."""


# ---------------------------------------------------------------- loading
ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a zip-format torch file (``torch.save``'s default since 1.6; the only one torch can mmap)."""


def load_state_dict(src: str | Path) -> dict:
    """The flat {key: tensor} of a ``.pt``/``.ckpt``/``.pth`` (``torch.load(weights_only=True)``, memory-mapped
    for the zip format, a ``{"state_dict": ...}`` wrapper unwrapped) or ``.safetensors`` file.

    Raises UserError (one line naming the file and the fix, no library text cut short) for a missing file,
    another suffix, a pickle that would import code (refused, nothing ran), a truncated or damaged file, or a
    file that is not a checkpoint at all."""
    import pickle

    import torch

    src = Path(src)
    if not src.is_file():
        raise _no_source(src)
    suffix = src.suffix.lower()
    if suffix == ".safetensors":
        sd = _load_safetensors(src)
    elif suffix in (".pt", ".ckpt", ".pth", ".bin"):
        try:
            with open(src, "rb") as f:
                head = f.read(len(ZIP_MAGIC))
            with warnings.catch_warnings():
                # torch warns about a pickle protocol it did not write before refusing the file; the refusal
                # below is the one line the user needs.
                warnings.simplefilter("ignore")
                # Only the zip format can be memory-mapped; weights_only guards a legacy (pre-zip) file too.
                sd = torch.load(src, map_location="cpu", weights_only=True, mmap=head == ZIP_MAGIC)
        except pickle.UnpicklingError as e:
            code = _code_import(src, e)
            if code is not None:
                raise UserError(
                    f"{src} was refused: loading it would import {code} (pickled code, not plain tensors); "
                    "convert only checkpoints from a source you trust"
                ) from None
            raise _not_a_torch_checkpoint(src, head, unpickling=True) from None
        except OSError as e:
            raise UserError(
                f"{src} cannot be read ({e.strerror or type(e).__name__}); check the file"
            ) from None
        except Exception:  # truncated zip or pickle, random bytes, text: torch's own text names no fix
            raise _not_a_torch_checkpoint(src, head, unpickling=False) from None
    else:
        raise UserError(
            f"{src}: use a .pt/.ckpt checkpoint or a .safetensors file (got {suffix or 'no suffix'})"
        )
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{src} holds no state dict of tensors; pass an LDM-format MVDream checkpoint")
    return sd


def _no_source(src: Path) -> UserError:
    return UserError(f"{src} does not exist; pass the downloaded checkpoint file (nothing is downloaded)")


MAX_SAFETENSORS_HEADER = 100_000_000
"""safetensors' own limit on a header's length: a longer one means the file is not safetensors at all."""


def _load_safetensors(src: Path) -> dict:
    """``src``'s tensors. Raises UserError for a file that is not safetensors, one cut short (its header
    describes more bytes than it holds), or one safetensors cannot read otherwise."""
    import struct

    from safetensors.torch import load_file

    # The header first: safetensors' own errors ("incomplete metadata, file not fully covered") do not say
    # that the file is cut short, nor what to do.
    size = src.stat().st_size
    with open(src, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else MAX_SAFETENSORS_HEADER + 1
        header = None
        if n <= MAX_SAFETENSORS_HEADER and 8 + n <= size:
            try:
                header = json.loads(f.read(n))
            except ValueError:
                pass
    if n > MAX_SAFETENSORS_HEADER or (8 + n <= size and not isinstance(header, dict)):
        raise UserError(
            f"{src} is not a safetensors file (it has no safetensors header); pass the downloaded file, or "
            "download it again"
        )
    try:
        need = (
            8 + n + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        )
    except (AttributeError, KeyError, TypeError, IndexError):
        need = None  # a malformed header: safetensors names what is wrong with it below
    if 8 + n > size or (need is not None and need != size):
        raise UserError(
            f"{src} is not a complete safetensors file ({size} bytes, "
            f"{f'its header describes {need}' if 8 + n <= size else f'its header alone needs {8 + n}'}); "
            "download it again"
        )
    try:
        return load_file(src)
    except Exception as e:  # safetensors raises its own error types (an unknown dtype, overlapping tensors)
        raise UserError(
            f"{src} is not a readable safetensors file ({_first_line(e)}); download it again"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _not_a_torch_checkpoint(src: Path, head: bytes, unpickling: bool) -> UserError:
    """The one-line error for a ``.pt`` torch could not load and that would import no code, from what the file
    starts with: a zip archive or a pickle that failed to read is cut short or damaged; anything else (text, an
    HTML error page saved by a browser, random bytes) is not a checkpoint at all."""
    if head == ZIP_MAGIC:
        return UserError(
            f"{src} is not a complete torch checkpoint (its zip archive is cut short or damaged); "
            "download it again"
        )
    if head[:1] == b"\x80":  # the PROTO opcode every pickle since protocol 2 starts with
        if unpickling and _pickle_globals(src)[1]:
            return UserError(
                f"{src} is not a torch checkpoint (a pickle of objects other than tensors, which "
                "torch.load(weights_only=True) does not read); pass a checkpoint saved by torch.save"
            )
        return UserError(
            f"{src} is not a complete torch checkpoint (its pickle is cut short or damaged); download it again"
        )
    if not head:
        return UserError(f"{src} is empty (0 bytes); download it again")
    what = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "other bytes"
    return UserError(
        f"{src} is not a torch checkpoint (it starts with {what}, not a zip archive or a pickle); "
        "pass the checkpoint file itself, or download it again"
    )


MAX_PICKLES = 8
"""How many pickles in a row ``_pickle_globals`` reads: a legacy torch file is five (magic number, protocol,
system info, the data, the storage keys), then raw storage bytes."""


def _pickle_globals(src: Path) -> tuple[list[str], bool]:
    """(the globals, as ``module.name``, that unpickling ``src`` would import; whether its first pickle is
    complete), read with ``pickletools`` opcode by opcode: nothing is imported or run. The pickle of a
    zip-format torch file is its ``data.pkl``; otherwise the file is a pickle (or several in a row)."""
    import pickletools
    import zipfile

    found: list[str] = []
    complete = False

    def scan(stream) -> None:
        nonlocal complete
        for n in range(MAX_PICKLES):
            memo: dict = {}
            strings: list = []  # the values last pushed: STACK_GLOBAL's module and name are the last two
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    found.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
                    memo[arg] = strings[-1]
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    strings.append(memo.get(arg))
                elif isinstance(arg, str):
                    strings.append(arg)
            complete = complete or n == 0

    try:
        if zipfile.is_zipfile(src):
            with zipfile.ZipFile(src) as z:
                names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if names:
                    scan(io.BytesIO(z.read(names[0])))
        else:
            with open(src, "rb") as f:  # read lazily: genops stops at each pickle's STOP
                scan(f)
    except Exception:  # the end of the pickles (raw storage bytes follow), or a pickle cut short
        pass
    return found, complete


def _code_import(src: Path, e: Exception) -> str | None:
    """The first global that ``torch.load(weights_only=True)`` refused to import from ``src`` (the reason
    ``e`` is), None when the failure was not about code: torch's message names it for a zip-format file;
    for a bare or legacy pickle it may fail on an opcode first, so the pickle is read for its globals."""
    found = re.search(r"GLOBAL (\S+)", str(e))
    if found is not None:
        return found.group(1).rstrip(".,;")
    try:  # torch's own allowlist: a private name, so torch's and OrderedDict stand in where it is gone
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed: set[str] | None = set(_get_allowed_globals())
    except Exception:
        allowed = None
    for name in _pickle_globals(src)[0]:
        safe = (
            name in allowed
            if allowed is not None
            else name.startswith("torch.") or name == "collections.OrderedDict"
        )
        if not safe:
            return name
    return None


def load_original_config(path: str | Path | None, sd: dict) -> tuple[str, dict]:
    """(name, config dict) of the LDM yaml at ``path``, or of the official architecture the state dict's text
    tower names (OpenCLIP -> sd-v2-base, HF CLIP -> sd-v1) when ``path`` is None."""
    if path is not None:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise _no_yaml(path)
        try:
            cfg = yaml.safe_load(path.read_text())
            cfg["model"]["params"]["unet_config"]["params"]
        except Exception:
            raise UserError(
                f"--original-config {path} is not an LDM yaml (model.params.unet_config.params); "
                "pass one in the format of the official sd-v2-base.yaml"
            ) from None
        return str(path), cfg
    if any(k.startswith(OPENCLIP_PREFIX) for k in sd):
        return "sd-v2-base", OFFICIAL_CONFIGS["sd-v2-base"]
    if any(k.startswith(CLIP_PREFIX) for k in sd):
        return "sd-v1", OFFICIAL_CONFIGS["sd-v1"]
    raise UserError(
        "the checkpoint has no cond_stage_model.model.* (OpenCLIP) or cond_stage_model.transformer.* (CLIP) "
        "text tower; pass --original-config YAML for another architecture"
    )


def _no_yaml(path: Path) -> UserError:
    return UserError(f"--original-config {path} does not exist; pass the LDM yaml of the checkpoint")


# ---------------------------------------------------------------- key accounting
def _sources(convert: Callable[[dict], dict], part: dict) -> dict[str, str]:
    """{converted key: source key}, by key name: ``convert`` (a diffusers converter of ``part``) run once more
    on stand-ins, meta tensors (no data) of ``part``'s shapes that each carry their key, which every view,
    slice or copy made from them inherits. Tensor identity would not do: the converters return views (the
    VAE's 1x1-conv attention) and copies (OpenCLIP's q/k/v split of ``in_proj``), and whether a view's
    ``_base`` is the loaded tensor depends on the loader (it is not for safetensors' ``load_file``)."""
    import torch

    class Named(torch.Tensor):
        key: str | None = None

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            out = super().__torch_function__(func, types, args, kwargs or {})
            if isinstance(out, cls) and out.key is None:
                flat = [b for a in args for b in (a if isinstance(a, list | tuple) else (a,))]
                out.key = next((a.key for a in flat if isinstance(a, cls) and a.key is not None), None)
            return out

    stand_ins = {}
    for k, v in part.items():
        stand_ins[k] = torch.empty(v.shape, dtype=v.dtype, device="meta").as_subclass(Named)
        stand_ins[k].key = k
    with warnings.catch_warnings():  # what the converter warns about was said by its run on the real tensors
        warnings.simplefilter("ignore")
        converted = convert(stand_ins)
    return {k: v.key for k, v in converted.items() if isinstance(v, Named) and v.key is not None}


def _ldm_name_of_missing(missing: str, sources: dict[str, str]) -> str | None:
    """The source name of a converted key no source produced, by analogy with its nearest converted
    neighbour: strip the dotted suffix a neighbour shares with its source name, keep the prefix mapping
    (``down_blocks.0.resnets.0.norm1.bias <- input_blocks.1.0.in_layers.0.bias`` names the missing
    ``...norm1.weight`` ``input_blocks.1.0.in_layers.0.weight``)."""
    best, best_len = None, -1
    for conv, src in sources.items():
        a, b = conv.split("."), src.split(".")
        n = 0
        while n < min(len(a), len(b)) - 1 and a[-1 - n] == b[-1 - n]:
            n += 1
        if n == 0:
            continue
        pa, pb = a[: len(a) - n], b[: len(b) - n]
        m = missing.split(".")
        if m[: len(pa)] == pa and len(pa) > best_len:
            best, best_len = ".".join(pb + m[len(pa) :]), len(pa)
    return best


def _sibling_of_unused(missing: str, unused: set[str]) -> str | None:
    """A missing ``....weight`` whose ``....bias`` the converter left unused (or the reverse): diffusers'
    converters skip a module when its weight is absent, so the source name is the unused sibling's."""
    leaf = missing.rsplit(".", 1)[-1]
    other = {"weight": "bias", "bias": "weight"}.get(leaf)
    if other is None:
        return None
    mod = missing.rsplit(".", 2)[-2]
    hits = sorted(
        u for u in unused if u.endswith(f".{mod}.{other}") and u[: -len(other)] + leaf not in unused
    )
    return hits[0][: -len(other)] + leaf if len(hits) == 1 else None


def _unknown(part_keys, used: set[str], prefix: str, official: str | None = None) -> None:
    """Raise UserError naming the first of ``part_keys`` (source keys less ``prefix``) not in ``used``: a key
    the architecture has no place for; with ``official`` (the architecture was assumed), the fix is the
    checkpoint's own --original-config."""
    left = sorted(set(part_keys) - used)
    if left:
        fix = (
            f"not part of the official {official} architecture: pass --original-config with the checkpoint's "
            "LDM yaml"
            if official
            else "not part of this architecture"
        )
        raise UserError(f"unknown key {prefix}{left[0]} ({len(left)} unconverted); {fix}")


def _converter_missing(prefix: str, e: KeyError, official: str | None) -> UserError:
    """The error for a key a diffusers converter looked up and the checkpoint lacks: the config's blocks are
    not all there, so either the checkpoint is incomplete or, when the official architecture was assumed, it
    is another one."""
    if official:
        return UserError(
            f"missing key {prefix}{e.args[0]}, which the official {official} architecture has; pass "
            "--original-config with the checkpoint's LDM yaml (or download the checkpoint again if it is an "
            "official one)"
        )
    return UserError(f"missing key {prefix}{e.args[0]}; the checkpoint is incomplete")


def _check_and_load(
    model_cls,
    config,
    converted: dict,
    sources: dict[str, str],
    part,
    prefix: str,
    official: str | None = None,
):
    """Match ``converted`` against ``model_cls(config)`` built on the meta device: the same keys and shapes.
    ``sources``: {converted key: source key} (``_sources``); ``part``: the source keys (less ``prefix``).
    ``official``: the name of the official architecture ``config`` is, when it was assumed (no
    --original-config) rather than given.

    Raises UserError naming the source key (``prefix`` + name) that is missing, unknown or mis-shaped. With
    ``official``, any unknown or mis-shaped key (or a missing one no source name is found for) means the
    checkpoint is of another size: the error says so and names --original-config, not a missing key.
    Returns (the model, the set of source keys used). ``converted`` and ``sources`` are renamed in place
    where transformers names a key otherwise."""
    import torch

    with torch.device("meta"):
        model = model_cls(config) if not isinstance(config, dict) else model_cls.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k in [k for k, v in converted.items() if v is None]:  # a converter's ``.get`` of an absent key
        del converted[k]
    # transformers 5's CLIPTextModel has no ``text_model.`` level; the official (and diffusers') names do.
    for k in [k for k in converted if k.startswith("text_model.") and k not in expected]:
        if k[len("text_model.") :] in expected:
            converted[k[len("text_model.") :]] = converted.pop(k)
            if k in sources:
                sources[k[len("text_model.") :]] = sources.pop(k)
    unused = set(part) - set(sources.values())
    missing = {
        k: _sibling_of_unused(k, unused) or _ldm_name_of_missing(k, sources)
        for k in expected
        if k not in converted
    }
    unknown = [k for k in converted if k not in expected]
    shapes = [k for k in converted if k in expected and tuple(converted[k].shape) != expected[k]]

    def src(k: str) -> str:
        return prefix + sources.get(k, k)

    if official and (unknown or shapes or None in missing.values()):
        if shapes:
            k = shapes[0]
            first = f"{src(k)} has shape {tuple(converted[k].shape)}, {official}'s is {expected[k]}"
        elif unknown:
            first = f"{src(unknown[0])} has no place in it"
        else:
            first = f"no key converts to its {next(k for k, v in missing.items() if v is None)}"
        raise UserError(
            f"the checkpoint's {prefix}* keys do not match the official {official} architecture ({first}; "
            f"{len(shapes) + len(unknown) + len(missing)} keys differ); pass --original-config with the "
            "checkpoint's LDM yaml"
        )
    for k, name in missing.items():
        if name is None:
            raise UserError(
                f"no {prefix}* key of the checkpoint converts to the model's {k}; the checkpoint is incomplete "
                "or of another architecture than --original-config describes"
            )
        raise UserError(f"missing key {prefix}{name} (converted name {k}); the checkpoint is incomplete")
    for k in unknown:
        raise UserError(f"unknown key {src(k)} (converted to {k}, which the model has no place for)")
    for k in shapes:
        raise UserError(
            f"key {src(k)} has shape {tuple(converted[k].shape)}, the architecture expects {expected[k]}; "
            "pass the matching --original-config"
        )
    return model, set(sources.values())


# ---------------------------------------------------------------- components
def _unet(sd: dict, cfg: dict, official: str | None = None):
    """The UNet (``MultiViewUNet``), its converted state dict and the source keys used. ``official``: the
    official architecture's name when ``cfg`` was assumed, not given (``_check_and_load``). Raises UserError
    for a camera_dim other than 16, a missing, unknown or mis-shaped key."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        create_unet_diffusers_config_from_ldm,
    )

    from mvforge.models.model import CAMERA_DIM, MultiViewUNet

    params = cfg["model"]["params"]["unet_config"]["params"]
    camera_dim = params.get("camera_dim")
    if camera_dim != CAMERA_DIM:
        raise UserError(
            f"unet_config camera_dim is {camera_dim}; MVDream checkpoints have camera_dim {CAMERA_DIM}"
        )
    with warnings.catch_warnings():  # diffusers deprecates the image_size argument; its default is SD's
        warnings.simplefilter("ignore")
        config = create_unet_diffusers_config_from_ldm(
            cfg, {}, image_size=8 * int(params.get("image_size", 32))
        )
    config["sample_size"] = int(params.get("image_size", 32))
    config.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
    part = {k[len(UNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    # MVDream's camera MLP sits where LDM keeps a "sequential" label embedding (camera_embed.{0,2} vs
    # label_emb.0.{0,2}); diffusers converts the latter to a projection class embedding.
    renamed = {}
    for k, v in part.items():
        if k.startswith("camera_embed."):
            renamed["label_emb.0." + k[len("camera_embed.") :]] = v
        elif k.startswith("label_emb."):
            raise UserError(f"unknown key {UNET_PREFIX}{k} (MVDream's UNet has no label embedding)")
        else:
            renamed[k] = v
    for i in (0, 2):
        for leaf in ("weight", "bias"):
            if f"label_emb.0.{i}.{leaf}" not in renamed:
                raise UserError(
                    f"missing key {UNET_PREFIX}camera_embed.{i}.{leaf}; the checkpoint is incomplete"
                )

    convert = _ldm_converter(convert_ldm_unet_checkpoint, UNET_PREFIX, config, official)
    converted = convert(renamed)
    sources = _sources(convert, renamed)
    model, used = _check_and_load(MultiViewUNet, config, converted, sources, renamed, UNET_PREFIX, official)
    _unknown(renamed, used, UNET_PREFIX, official)
    back = {("camera_embed." + k[len("label_emb.0.") :] if k.startswith("label_emb.0.") else k) for k in used}
    return model, converted, {UNET_PREFIX + k for k in back}


def _ldm_converter(fn: Callable, prefix: str, config: dict, official: str | None) -> Callable[[dict], dict]:
    """``part`` (keys without ``prefix``) -> diffusers' ``fn(prefixed part, config)``; a key the converter
    needs and the checkpoint lacks is ``_converter_missing``'s one line."""

    def convert(part: dict) -> dict:
        try:
            return fn({prefix + k: v for k, v in part.items()}, config)
        except KeyError as e:
            raise _converter_missing(prefix, e, official) from None

    return convert


def _vae(sd: dict, cfg: dict, official: str | None = None):
    """The VAE (``AutoencoderKL``), its converted state dict and the source keys used; ``official`` as for
    ``_unet``. Raises UserError for an attention VAE, a missing, unknown or mis-shaped key."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
    )

    params = cfg["model"]["params"]
    ddconfig = params["first_stage_config"]["params"]["ddconfig"]
    if ddconfig.get("attn_resolutions"):
        raise UserError(
            "first_stage_config attn_resolutions must be [] (SD's VAE); diffusers has no such VAE"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = create_vae_diffusers_config_from_ldm(
            cfg, {}, image_size=int(ddconfig.get("resolution", 256))
        )
    part = {k[len(VAE_PREFIX) :]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}

    convert = _ldm_converter(convert_ldm_vae_checkpoint, VAE_PREFIX, config, official)
    converted = convert(part)
    sources = _sources(convert, part)
    model, used = _check_and_load(AutoencoderKL, config, converted, sources, part, VAE_PREFIX, official)
    _unknown(part, used, VAE_PREFIX, official)
    return model, converted, {VAE_PREFIX + k for k in used}


def _text_config(
    width: int, layers: int, heads: int, mlp: int, vocab: int, positions: int, act: str, proj: int
):
    from transformers import CLIPTextConfig

    if width % heads:
        raise UserError(f"text width {width} is not a multiple of the architecture's {heads} heads")
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=positions,
        hidden_act=act,
        layer_norm_eps=1e-5,
        projection_dim=proj,
        bos_token_id=49406,
        eos_token_id=49407,
    )


def _openclip(sd: dict, cfg: dict):
    """OpenCLIP text tower -> CLIPTextModel cut at the layer the yaml names (``penultimate``: all blocks but
    the last, then ``ln_final``, as the official ``FrozenOpenCLIPEmbedder.encode_with_transformer``)."""
    import open_clip
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel

    params = cfg["model"]["params"]["cond_stage_config"].get("params") or {}
    arch = params.get("arch", "ViT-H-14")  # FrozenOpenCLIPEmbedder's default
    layer = params.get("layer", "last")
    if layer not in ("last", "penultimate"):
        raise UserError(f"cond_stage_config layer {layer!r}: use last or penultimate")
    arch_cfg = open_clip.get_model_config(arch)
    if arch_cfg is None:
        raise UserError(f"cond_stage_config arch {arch!r} is not an open_clip architecture (e.g. ViT-H-14)")
    text_cfg = arch_cfg["text_cfg"]
    part = {k[len(OPENCLIP_PREFIX) :]: v for k, v in sd.items() if k.startswith(OPENCLIP_PREFIX)}
    for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"):
        if k not in part:
            raise UserError(f"missing key {OPENCLIP_PREFIX}{k}; the checkpoint is incomplete")
    depth = 1 + max(
        (int(k.split(".")[2]) for k in part if k.startswith("transformer.resblocks.")), default=-1
    )
    keep = depth - (1 if layer == "penultimate" else 0)
    if keep < 1:
        raise UserError(f"the OpenCLIP text tower has {depth} blocks; {layer} needs more")
    vocab, width = part["token_embedding.weight"].shape
    fc = part.get("transformer.resblocks.0.mlp.c_fc.weight")
    config = _text_config(
        width,
        keep,
        int(text_cfg.get("heads", 8)),  # open_clip's TextCfg default
        int(fc.shape[0]) if fc is not None else 4 * width,
        vocab,
        part["positional_embedding"].shape[0],
        "quick_gelu" if arch_cfg.get("quick_gelu") else "gelu",
        int(part["text_projection"].shape[1]) if "text_projection" in part else width,
    )
    dropped = {}

    # Blocks cut off are dropped, but a checkpoint missing part of one is broken: each must hold what every
    # kept block holds (a key only some kept blocks hold is the converter's to name below).
    def block(i: int) -> set[str]:
        head = f"transformer.resblocks.{i}."
        return {k[len(head) :] for k in part if k.startswith(head)}

    common = set.intersection(*(block(i) for i in range(keep)))
    known = set.union(*(block(i) for i in range(keep)))
    for i in range(keep, depth):
        for sub in sorted(block(i) - known):
            raise UserError(
                f"unknown key {OPENCLIP_PREFIX}transformer.resblocks.{i}.{sub}; not an OpenCLIP block key"
            )
        for sub in sorted(common):
            if f"transformer.resblocks.{i}.{sub}" not in part:
                name = f"{OPENCLIP_PREFIX}transformer.resblocks.{i}.{sub}"
                raise UserError(f"missing key {name}; the checkpoint is incomplete")
    cut = {f"transformer.resblocks.{i}." for i in range(keep, depth)}
    for k in part:
        if any(k.startswith(c) for c in cut):
            dropped[OPENCLIP_PREFIX + k] = (
                f"text block after the {layer} layer (unused by the official model)"
            )
        elif k in ("text_projection", "logit_scale", "attn_mask"):
            dropped[OPENCLIP_PREFIX + k] = "CLIP head (unused: the UNet reads the token states)"
    # A neutral prefix: diffusers skips resblocks.23 of the prefix "cond_stage_model.model." (ViT-H's last
    # block) by name, which would drop a kept block of a deeper tower; the cut above is ours, at any depth.
    tag = "openclip."
    kept = {k: v for k, v in part.items() if OPENCLIP_PREFIX + k not in dropped}
    for i in range(keep):
        for leaf in ("in_proj_weight", "in_proj_bias"):
            if f"transformer.resblocks.{i}.attn.{leaf}" not in kept:
                name = f"{OPENCLIP_PREFIX}transformer.resblocks.{i}.attn.{leaf}"
                raise UserError(f"missing key {name}; the checkpoint is incomplete")

    def convert(part: dict) -> dict:
        return convert_open_clip_checkpoint(_Width(width), {tag + k: v for k, v in part.items()}, prefix=tag)

    converted = convert(kept)
    model, used = _check_and_load(
        CLIPTextModel, config, converted, _sources(convert, kept), kept, OPENCLIP_PREFIX
    )
    _unknown(kept, used, OPENCLIP_PREFIX)
    used = {OPENCLIP_PREFIX + k for k in used}
    return model, converted, used, dropped


class _Width:
    """What diffusers' OpenCLIP converter reads of the text model: ``config.hidden_size`` (the q/k/v split)."""

    def __init__(self, width: int) -> None:
        self.config = type("C", (), {"hidden_size": width})()


def _clip(sd: dict, cfg: dict):
    """HF CLIP text tower (SD 1.x ``FrozenCLIPEmbedder``, layer "last"): the keys are transformers' own."""
    import open_clip
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextModel

    params = cfg["model"]["params"]["cond_stage_config"].get("params") or {}
    if params.get("layer", "last") != "last":
        raise UserError(f"cond_stage_config layer {params['layer']!r}: only 'last' is supported for CLIP")
    part = {k[len(CLIP_PREFIX) :]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    for k in (
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
    ):
        if k not in part:
            raise UserError(f"missing key {CLIP_PREFIX}{k}; the checkpoint is incomplete")
    dropped = {}
    if "text_model.embeddings.position_ids" in part:
        dropped[CLIP_PREFIX + "text_model.embeddings.position_ids"] = (
            "constant buffer (arange) transformers rebuilds"
        )
    # The official version string is openai/clip-vit-large-patch14: open_clip's ViT-L-14 with OpenAI's QuickGELU.
    arch_cfg = open_clip.get_model_config(params.get("arch", "ViT-L-14"))
    text_cfg = arch_cfg["text_cfg"]
    layers = 1 + max(int(k.split(".")[3]) for k in part if k.startswith("text_model.encoder.layers."))
    vocab, width = part["text_model.embeddings.token_embedding.weight"].shape
    fc = part.get("text_model.encoder.layers.0.mlp.fc1.weight")
    config = _text_config(
        width,
        layers,
        int(text_cfg.get("heads", 8)),
        int(fc.shape[0]) if fc is not None else 4 * width,
        vocab,
        part["text_model.embeddings.position_embedding.weight"].shape[0],
        "quick_gelu",
        width,
    )
    kept_part = {k: v for k, v in part.items() if CLIP_PREFIX + k not in dropped}

    def convert(part: dict) -> dict:
        return convert_ldm_clip_checkpoint({CLIP_PREFIX + k: v for k, v in part.items()})

    converted = convert(kept_part)
    sources = _sources(convert, kept_part)
    model, used = _check_and_load(CLIPTextModel, config, converted, sources, kept_part, CLIP_PREFIX)
    _unknown(kept_part, used, CLIP_PREFIX)
    return model, converted, {CLIP_PREFIX + k for k in used}, dropped


# ---------------------------------------------------------------- schedule, tokenizer
def _scheduler(sd: dict, cfg: dict):
    """LDM's "linear" schedule is diffusers' ``scaled_linear`` (β = linspace(√start, √end, T)², docs/design.md
    §10.10); checked against the checkpoint's ``betas`` and ``alphas_cumprod``. A checkpoint whose betas
    differ (another schedule) keeps its own betas as ``trained_betas``."""
    import torch
    from diffusers import DDPMScheduler

    for k in SCHEDULE_BUFFERS:
        if k not in sd:
            raise UserError(f"missing key {k} (schedule buffer); the checkpoint is incomplete")
    params = cfg["model"]["params"]
    betas = sd["betas"].double()
    param = params.get("parameterization", "eps")
    if param not in ("eps", "v"):
        raise UserError(f"parameterization {param!r}: use eps or v")
    kwargs = dict(
        num_train_timesteps=int(betas.shape[0]),
        beta_start=float(params.get("linear_start", 0.00085)),
        beta_end=float(params.get("linear_end", 0.012)),
        prediction_type="epsilon" if param == "eps" else "v_prediction",
        clip_sample=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    # make_scheduler adds DDIM's final-alpha convention (set_alpha_to_one=False) when the DDIM is written.
    sched = DDPMScheduler(beta_schedule="scaled_linear", **kwargs)
    if not torch.allclose(sched.betas.double(), betas, rtol=1e-5, atol=1e-9):
        sched = DDPMScheduler(trained_betas=betas.tolist(), **kwargs)
    ac = sd["alphas_cumprod"].double()
    err = float((sched.alphas_cumprod.double() - ac).abs().max())
    if err > 1e-5:
        raise UserError(
            f"alphas_cumprod of the checkpoint differs from its betas' cumulative product by {err:.2e}; "
            "the schedule buffers are inconsistent"
        )
    return sched, err


def clip_tokenizer():
    """The CLIP BPE tokenizer (49408 tokens, 77 positions) from open_clip's bundled merges file.

    CLIP's vocab: the 256 byte-level characters, the same with ``</w>``, the joined merges, then the
    start/end tokens (the construction in CLIP's and open_clip's SimpleTokenizer). It pads with id 0 ("!"), as
    open_clip's ``tokenize`` and SD 2.x's tokenizer do: SD's cross-attention reads all 77 positions, so padding
    with ``<|endoftext|>`` (49407, HF CLIP's default) would change a real SD 2.x model's conditioning.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    merges_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(merges_file.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77)
    # Set after construction: a pad_token passed to the constructor becomes an added special token, and "!" in
    # a prompt would then be split off as id 0 instead of merged by BPE ("!!" is one token for open_clip).
    tok.pad_token = "!"  # id 0
    return tok


def _tokenizer(kind: str, positions: int):
    """CLIP's BPE tokenizer padded as the model was trained: id 0 for OpenCLIP (open_clip's ``tokenize``),
    ``<|endoftext|>`` for SD 1.x (``FrozenCLIPEmbedder``'s HF tokenizer, padding="max_length")."""
    tok = clip_tokenizer()
    tok.model_max_length = positions
    if kind == "clip":
        tok.pad_token = "<|endoftext|>"
    return tok


# ---------------------------------------------------------------- writing
SHARD_SIZE = "1GB"
"""Largest safetensors file written: safetensors serialises a whole file in memory, so shards bound the
converter's extra memory (diffusers and transformers load the sharded layout with its index json)."""


def _write_weights(converted: dict, folder: Path, stem: str, dtype, transformers_format: bool) -> None:
    """``converted`` as ``folder/<stem>.safetensors`` (or shards ``<stem>-0000i-of-0000n.safetensors`` plus
    ``<stem>.safetensors.index.json`` above ``SHARD_SIZE``), floating tensors cast to ``dtype`` shard by shard."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    from mvforge.fsutil import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(
        converted, filename_pattern=stem + "{suffix}.safetensors", max_shard_size=SHARD_SIZE
    )
    for filename, keys in split.filename_to_tensors.items():
        shard, seen = {}, set()
        for k in keys:
            v = converted[k]
            v = (v.to(dtype) if v.is_floating_point() else v).contiguous()
            if v.data_ptr() in seen:  # safetensors refuses shared storage
                v = v.clone()
            seen.add(v.data_ptr())
            shard[k] = v
        save_file(shard, str(folder / filename), metadata={"format": "pt"} if transformers_format else None)
        del shard
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        atomic_write_json(folder / f"{stem}.safetensors.index.json", index)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _rss_split_mb() -> dict[str, float]:
    """Current resident memory by kind (Linux /proc): ``file`` is mostly the memory-mapped source checkpoint,
    page cache the kernel can drop under pressure; ``anon`` is what the conversion itself holds."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0][3:].lower()] = round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return out


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    original_config: str | Path | None = None,
    dtype: str = "fp32",
) -> ConvertReport:
    """Convert an LDM-format MVDream checkpoint ``src`` into a pipeline directory ``out`` (new or empty),
    weights in ``dtype`` (fp32, fp16 or bf16). Filled as ``out.tmp-<pid>`` and renamed: complete or absent.
    An ``out`` that already holds this conversion (``DONE_FILE``: the same source file, yaml and dtype) is kept
    as it is, so the same command run again succeeds without converting again.

    Raises UserError for a refused/unreadable file, an unknown or missing key (named), a shape that does not
    fit the architecture (without ``original_config``: a checkpoint of another size than the official one),
    or an ``out`` that holds anything but this conversion. Returns a ``ConvertReport`` (also written as
    ``conversion.json`` and summarised in the model card ``README.md``).
    """
    import shutil

    import torch
    from diffusers import __version__ as diffusers_version

    from mvforge.fsutil import atomic_write_json, atomic_write_text, remove_dead_tmp, tmp_path
    from mvforge.models.pipeline import make_scheduler

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    src, out = Path(src), Path(out)
    if not src.is_file():
        raise _no_source(src)
    if original_config is not None and not Path(original_config).is_file():
        raise _no_yaml(Path(original_config))
    request = _request(src, original_config, dtype)
    leftovers = remove_dead_tmp(out)
    if _finished(out, request):
        return _kept_report(out, leftovers)
    start = time.perf_counter()
    sd = load_state_dict(src)
    name, cfg = load_original_config(original_config, sd)
    official = name if original_config is None else None  # assumed from the text tower, not given
    report = ConvertReport(out=out, architecture=name, leftovers=leftovers)

    known = {k for k in sd if k.startswith((UNET_PREFIX, VAE_PREFIX, OPENCLIP_PREFIX, CLIP_PREFIX))}
    known |= set(SCHEDULE_BUFFERS) & set(sd)
    unknown = sorted(set(sd) - known)
    if unknown:
        raise UserError(
            f"unknown key {unknown[0]} ({len(unknown)} unknown); not part of an MVDream checkpoint"
        )

    tmp = tmp_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    used: set[str] = set()
    dropped: dict[str, str] = {}
    try:
        # One component at a time: converted, checked, written, freed.
        model, conv, u = _unet(sd, cfg, official)
        model.save_config(tmp / "unet")
        _write_weights(conv, tmp / "unet", "diffusion_pytorch_model", torch_dtype, False)
        used |= u
        report.converted["unet"] = len(u)
        del model, conv

        model, conv, u = _vae(sd, cfg, official)
        model.save_config(tmp / "vae")
        _write_weights(conv, tmp / "vae", "diffusion_pytorch_model", torch_dtype, False)
        used |= u
        report.converted["vae"] = len(u)
        del model, conv

        if any(k.startswith(OPENCLIP_PREFIX) for k in sd):
            model, conv, u, d = _openclip(sd, cfg)
            kind = "openclip"
        elif any(k.startswith(CLIP_PREFIX) for k in sd):
            model, conv, u, d = _clip(sd, cfg)
            kind = "clip"
        else:
            raise UserError(
                "missing the text tower (cond_stage_model.model.* or cond_stage_model.transformer.*)"
            )
        model.config.architectures = ["CLIPTextModel"]
        model.config.dtype = torch_dtype
        model.config.save_pretrained(tmp / "text_encoder")
        _write_weights(conv, tmp / "text_encoder", "model", torch_dtype, True)
        positions = model.config.max_position_embeddings
        used |= u
        dropped.update(d)
        report.converted["text_encoder"] = len(u)
        del model, conv

        _tokenizer(kind, positions).save_pretrained(tmp / "tokenizer")
        sched, err = _scheduler(sd, cfg)
        make_scheduler("ddim", sched.config).save_pretrained(tmp / "scheduler")
        used |= {"betas", "alphas_cumprod"}
        for k in SCHEDULE_BUFFERS[2:]:
            dropped[k] = "schedule buffer derived from betas (diffusers recomputes it)"

        left = sorted(set(sd) - used - set(dropped))
        if left:
            raise UserError(f"unknown key {left[0]} ({len(left)} unconverted); not part of this architecture")
        _write_model_index(tmp, diffusers_version)
        report.dropped = dropped
        report.seconds = time.perf_counter() - start
        report.peak_rss_mb = _peak_rss_mb()
        record = {
            "source": str(src.resolve()),
            "architecture": name,
            "dtype": dtype,
            "converted": report.converted,
            "dropped": dropped,
            "alphas_cumprod_max_abs_error": err,
            "seconds": round(report.seconds, 2),
            "peak_rss_mb": round(report.peak_rss_mb, 1),
            "rss_mb_at_end": _rss_split_mb(),
        }
        atomic_write_json(tmp / "conversion.json", record)
        atomic_write_text(tmp / "README.md", model_card(record))
        atomic_write_json(tmp / DONE_FILE, request)  # last: what a rerun compares itself with
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.kept = not _publish(tmp, out, request)
    return report


DONE_FILE = "convert.json"
"""Written last into a converted pipeline directory: what decides that a rerun is the same conversion
(``_request``), so the same command run again keeps the directory as it is."""


def _request(src: Path, original_config: str | Path | None, dtype: str) -> dict:
    """What makes two conversions the same, as ``DONE_FILE`` records it: the source's resolved path, size and
    modification time (a file downloaded again or replaced is another source; a directory: the sum of its
    files' sizes and the newest time), the yaml's resolved path and content hash, and the dtype. Size and time
    instead of a hash: hashing a 5 GB checkpoint to decide to do nothing would take longer than a glance."""
    import hashlib

    files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
    stats = [p.stat() for p in files]
    yaml = Path(original_config) if original_config is not None else None
    return {
        "command": "mvtrain convert",
        "source": str(src.resolve()),
        "source_bytes": sum(st.st_size for st in stats),
        "source_mtime_ns": max((st.st_mtime_ns for st in stats), default=0),
        "original_config": str(yaml.resolve()) if yaml is not None else None,
        "original_config_sha256": hashlib.sha256(yaml.read_bytes()).hexdigest() if yaml is not None else None,
        "dtype": dtype,
    }


def _finished(out: Path, request: dict) -> bool:
    """Whether ``out`` already holds the conversion ``request`` describes (its ``DONE_FILE`` says so); False
    for an absent or empty ``out``. Raises UserError, naming the fix, for an ``out`` converted from another
    source or with other settings, or holding anything else."""
    from mvforge import rundir

    if not out.exists() or not any(out.iterdir()):
        return False
    try:
        done = json.loads((out / DONE_FILE).read_text())
    except (OSError, ValueError):
        done = None
    if not isinstance(done, dict) or done.get("command") != request["command"]:
        raise UserError(f"{out} is not empty and holds no finished conversion; pass a new directory to --out")
    diff = rundir.settings_difference(done, request)
    if diff:
        raise UserError(
            f"{out} holds a conversion from another source or with other settings ({diff}); pass a new "
            "directory to --out, or remove it to convert again"
        )
    return True


def _kept_report(out: Path, leftovers: list[Path]) -> ConvertReport:
    """The report of the finished conversion kept in ``out``, from its ``conversion.json``; ``leftovers``: the
    killed runs' copies removed before it was found finished."""
    try:
        record = json.loads((out / "conversion.json").read_text())
    except (OSError, ValueError):
        record = {}
    return ConvertReport(
        out=out,
        architecture=str(record.get("architecture", "?")),
        converted=dict(record.get("converted") or {}),
        dropped=dict(record.get("dropped") or {}),
        seconds=float(record.get("seconds") or 0.0),
        peak_rss_mb=float(record.get("peak_rss_mb") or 0.0),
        kept=True,
        leftovers=leftovers,
    )


def _publish(tmp: Path, out: Path, request: dict) -> bool:
    """Rename the filled ``tmp`` onto ``out`` (absent or an empty directory): True. False (``tmp`` removed)
    when another run of the same conversion filled ``out`` meanwhile. Raises UserError (``_finished``) when
    something else did."""
    import errno
    import os
    import shutil

    try:
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return True
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not _finished(out, request):
        raise UserError(f"{out} changed while converting into it; run the same command again")
    return False


def _licence(architecture: str) -> str:
    base = {
        "sd-v2-base": "Stable Diffusion 2.1 base (CreativeML Open RAIL++-M)",
        "sd-v1": "Stable Diffusion 1.5 (CreativeML OpenRAIL-M)",
    }.get(architecture)
    if base is None:
        return "those of the checkpoint and of the model it was fine-tuned from."
    return f"the released MVDream weights are a fine-tune of {base} and carry its use restrictions."


def model_card(record: dict) -> str:
    """The pipeline directory's README.md: source, licence, what equals the official code and how it was
    measured."""
    dropped = record["dropped"]
    kinds = sorted(set(dropped.values()))
    lines = [
        "---",
        "library_name: diffusers",
        "tags: [mvforge, mvdream, multi-view, text-to-3d]",
        "---",
        "# MVDream multi-view diffusion (converted by `mvtrain convert`)",
        "",
        f"- Source checkpoint: `{record['source']}` (LDM layout, bytedance/MVDream), "
        f"architecture `{record['architecture']}`; weights written in {record['dtype']}.",
        f"- Licence: the source weights' own terms apply unchanged: {_licence(record['architecture'])} "
        "Check the release page of the file you converted; mvforge adds no terms.",
        "- Load: `MultiViewDiffusion.from_pretrained(DIR)` or `mvtrain sample --model DIR --prompt TEXT` "
        "(official inference defaults: DDIM 50 steps, eta 0, CFG 10, 4 views at elevation 15, ', 3d asset').",
        "",
        "## What equals the official code, and how it was measured",
        "",
        "- UNet (multi-view attention, camera MLP as a projection class embedding), VAE and text encoder: "
        "same weights, renamed by diffusers' LDM converters (OpenCLIP: all blocks before the configured layer, "
        "then ln_final, as `FrozenOpenCLIPEmbedder`). mvforge's tests build a tiny checkpoint in the official "
        "layout and compare the converted UNet, VAE decoder and text encoder outputs with an independent "
        "reference (open_clip's own text tower; the UNet/VAE written back with a mapping from the LDM module "
        "layout): max abs difference below 1e-4 (tests/models/test_convert.py).",
        f"- Noise schedule: scaled_linear 0.00085..0.012 (LDM 'linear'); the scheduler's alphas_cumprod equals "
        f"the checkpoint's buffer within {record['alphas_cumprod_max_abs_error']:.1e} (max abs).",
        "- Sampler: DDIM without sample clipping, final alpha = alphas_cumprod[0], timesteps 'leading' with "
        "offset 1 (the official LDM DDIM).",
        "- Text tokens are padded as in training (OpenCLIP: id 0; SD 1.x CLIP: <|endoftext|>).",
        "",
        "## Conversion",
        "",
        f"- Keys converted: {json.dumps(record['converted'])}; dropped: {len(dropped)} "
        f"({'; '.join(kinds) if kinds else 'none'}); full list in conversion.json.",
        f"- Time {record['seconds']} s, peak RSS {record['peak_rss_mb']} MiB.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the community diffusers port
COMMUNITY_UNET_CLASS = "MultiViewUNetModel"
"""The UNet class name in ``model_index.json`` / ``unet/config.json`` of the community diffusers port of the
released weights (ashawkey/mvdream_diffusers, e.g. the Hub's ashawkey/mvdream-sd2.1-diffusers): its ``unet/``
holds the official LDM UNet's parameters as config and its state dict without the ``model.diffusion_model.``
prefix; vae/, text_encoder/, tokenizer/ and scheduler/ are standard diffusers folders."""


def is_community_dir(path: str | Path) -> bool:
    """Whether ``path`` is a pipeline directory of the community diffusers port (``COMMUNITY_UNET_CLASS``)."""
    config_file = Path(path) / "unet" / "config.json"
    if not config_file.is_file():
        return False
    config = json.loads(config_file.read_text())
    return config.get("_class_name") == COMMUNITY_UNET_CLASS or "model_channels" in config


def _community_unet_weights(unet_dir: Path) -> dict:
    """The community UNet's state dict: ``diffusion_pytorch_model.safetensors`` (or its ``.fp16`` variant, or
    the shards an ``.index.json`` lists). Raises UserError when there is none (a .bin is not read: pickle)."""
    from safetensors.torch import load_file

    index = sorted(unet_dir.glob("diffusion_pytorch_model*.safetensors.index.json"))
    if index:
        files = sorted(set(json.loads(index[0].read_text())["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(str(unet_dir / f)).items()}
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (unet_dir / name).is_file():
            return load_file(str(unet_dir / name))
    raise UserError(
        f"{unet_dir} has no diffusion_pytorch_model*.safetensors; download the safetensors weights "
        "(pickled .bin files are not read)"
    )


def convert_community(src: str | Path, out: str | Path, dtype: str = "fp32") -> ConvertReport:
    """Convert a directory of the community diffusers port (``is_community_dir``) into an mvforge pipeline
    directory ``out`` (new or empty), weights in ``dtype``. The UNet goes through the same LDM converter as the
    official checkpoints (its keys are the official ones less the prefix); the VAE, text encoder and tokenizer
    are copied as they are; the scheduler becomes the official DDIM on the port's noise schedule. Filled as
    ``out.tmp-<pid>`` and renamed: complete or absent; an ``out`` that already holds this conversion (the same
    directory, unchanged, and dtype: ``DONE_FILE``) is kept as it is. Raises UserError for a missing or
    unknown key, a camera_dim other than 16, or an ``out`` that holds anything but this conversion."""
    import shutil

    import torch
    from diffusers import DDIMScheduler
    from diffusers import __version__ as diffusers_version

    from mvforge.fsutil import atomic_write_json, remove_dead_tmp, tmp_path
    from mvforge.models.pipeline import make_scheduler

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    src, out = Path(src), Path(out)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (src / sub).is_dir():
            raise UserError(f"{src} has no {sub}/; pass the whole community pipeline directory")
    request = _request(src, None, dtype)
    leftovers = remove_dead_tmp(out)
    if _finished(out, request):
        return _kept_report(out, leftovers)
    start = time.perf_counter()
    params = {k: v for k, v in json.loads((src / "unet" / "config.json").read_text()).items() if k[0] != "_"}
    sd = {UNET_PREFIX + k: v for k, v in _community_unet_weights(src / "unet").items()}
    # The port drops these LDM flags from its config; SD 2.x's linear proj_in is seen in the weights' rank.
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    params.setdefault("use_linear_in_transformer", proj is not None and proj.ndim == 2)
    params.setdefault("use_spatial_transformer", True)
    params.setdefault("legacy", False)
    vae_levels = len(json.loads((src / "vae" / "config.json").read_text())["block_out_channels"])
    cfg = {
        "model": {
            "params": {
                "unet_config": {"params": params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1] * vae_levels}}},
            }
        }
    }
    report = ConvertReport(out=out, architecture="community-diffusers", leftovers=leftovers)
    tmp = tmp_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model, conv, used = _unet(sd, cfg)
        left = sorted(set(sd) - used)
        if left:
            raise UserError(
                f"unknown key {left[0][len(UNET_PREFIX) :]} in {src / 'unet'} ({len(left)} unconverted)"
            )
        model.save_config(tmp / "unet")
        _write_weights(conv, tmp / "unet", "diffusion_pytorch_model", torch_dtype, False)
        report.converted["unet"] = len(used)
        del model, conv, sd
        for sub in ("vae", "text_encoder", "tokenizer"):
            shutil.copytree(src / sub, tmp / sub)
        sched = DDIMScheduler.from_pretrained(src, subfolder="scheduler")
        make_scheduler("ddim", sched.config).save_pretrained(tmp / "scheduler")
        _write_model_index(tmp, diffusers_version)
        report.seconds = time.perf_counter() - start
        report.peak_rss_mb = _peak_rss_mb()
        atomic_write_json(
            tmp / "conversion.json",
            {"source": src.name, "architecture": report.architecture, "dtype": dtype,
             "converted": report.converted, "seconds": round(report.seconds, 2)},
        )  # fmt: skip
        atomic_write_json(tmp / DONE_FILE, request)  # last: what a rerun compares itself with
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.kept = not _publish(tmp, out, request)
    return report


def _write_model_index(directory: Path, diffusers_version: str) -> None:
    """A converted pipeline directory's ``model_index.json``, pointed at mvforge's pipeline module by
    ``write_pipeline_entry`` (diffusers' custom-pipeline entry, docs/ecosystem.md)."""
    from mvforge.fsutil import atomic_write_json
    from mvforge.models.pipeline import write_pipeline_entry

    index = {
        "_class_name": "MVDreamPipeline",
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["mvforge.models.model", "MultiViewUNet"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    atomic_write_json(directory / "model_index.json", index)
    write_pipeline_entry(directory)
