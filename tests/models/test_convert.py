"""`mvtrain convert` (docs/sample.md): tiny checkpoints in the official LDM layout -> pipeline directories.

The reference is independent of diffusers' conversion tables: tiny diffusers models written out under the
official key names by ``tests.fixtures.ldm_layout`` (a mapping written from the LDM module layout, which the
converter never uses), and the real open_clip / transformers text towers, whose own state-dict names the
official checkpoint holds. The converted pipeline must reproduce their outputs
within 1e-4.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvforge.errors import UserError
from tests.fixtures.ldm_layout import schedule_buffers, unet_to_ldm, vae_to_ldm

MVTRAIN = str(Path(sys.executable).with_name("mvtrain"))


# ---------------------------------------------------------------- reference helpers
def openclip_penultimate(tower, ids: torch.Tensor) -> torch.Tensor:
    """The official ``FrozenOpenCLIPEmbedder`` (layer "penultimate") on an open_clip text tower: token +
    positional embedding, every residual block but the last with the causal mask, then ``ln_final``."""
    x = tower.token_embedding(ids) + tower.positional_embedding
    batch_first = getattr(tower.transformer, "batch_first", False)
    if not batch_first:
        x = x.permute(1, 0, 2)
    for block in tower.transformer.resblocks[:-1]:
        x = block(x, attn_mask=tower.attn_mask)
    if not batch_first:
        x = x.permute(1, 0, 2)
    return tower.ln_final(x)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add seeded noise to every parameter: no zero-initialised or identity weight hides a mapping error."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ---------------------------------------------------------------- tests


def _yaml(unet_heads: str, context_dim: int, text: str) -> str:
    """A tiny architecture in the format of the official sd-v2-base.yaml."""
    return f"""
model:
  target: mvdream.ldm.interface.LatentDiffusionInterface
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    timesteps: 1000
    scale_factor: 0.18215
    parameterization: "eps"
    unet_config:
      target: mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel
      params:
        image_size: 8
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [ 1 ]
        num_res_blocks: 1
        channel_mult: [ 1, 2 ]
{unet_heads}
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: {context_dim}
        use_checkpoint: False
        legacy: False
        camera_dim: 16
    first_stage_config:
      target: mvdream.ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 64
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [ 1, 2 ]
          num_res_blocks: 1
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
    cond_stage_config:
{text}
"""


YAML_V2 = _yaml(
    "        num_head_channels: 8\n        use_linear_in_transformer: True",
    32,
    "      target: mvdream.ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder\n"
    "      params:\n        arch: ViT-H-14\n        freeze: True\n        layer: penultimate",
)
YAML_V1 = _yaml(
    "        num_heads: 2",
    48,
    "      target: mvdream.ldm.modules.encoders.modules.FrozenCLIPEmbedder",
)


def _unet(context_dim: int, heads, linear: bool, seed: int):
    """The reference UNet, configured from the LDM semantics of the yaml above (diffusers' legacy
    ``attention_head_dim`` is the number of heads: channels / num_head_channels per level, or num_heads)."""
    from mvforge.models.model import MultiViewUNet, install_multiview_attention

    torch.manual_seed(seed)
    unet = MultiViewUNet(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=context_dim,
        attention_head_dim=heads,
        use_linear_projection=linear,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=16,
    )
    perturb(unet, seed)
    install_multiview_attention(unet)
    return unet.eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        sample_size=64,
    )
    perturb(vae, seed)
    return vae.eval()


def _checkpoint(unet, vae, text_prefix: str, text_sd: dict) -> dict:
    sd = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(unet).items()}
    sd |= {"first_stage_model." + k: v for k, v in vae_to_ldm(vae).items()}
    sd |= {text_prefix + k: v.detach().clone() for k, v in text_sd.items()}
    return sd | schedule_buffers()


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    """SD 2.1-style: OpenCLIP text tower 3 blocks deep (ViT-H-14's 16 heads, width 32), penultimate layer."""
    from open_clip.transformer import TextTransformer

    d = tmp_path_factory.mktemp("v2")
    torch.manual_seed(2)
    tower = TextTransformer(context_length=77, vocab_size=49408, width=32, heads=16, layers=3, output_dim=32)
    perturb(tower, 3)
    tower.eval()
    text_sd = {k: v for k, v in tower.state_dict().items() if k != "attn_mask"}
    text_sd["logit_scale"] = torch.tensor(4.6052)  # the CLIP model's, kept in the official checkpoint
    refs = dict(unet=_unet(32, (4, 8), True, 0), vae=_vae(1), text=tower)
    sd = _checkpoint(refs["unet"], refs["vae"], "cond_stage_model.model.", text_sd)
    (d / "tiny-v2.yaml").write_text(YAML_V2)
    torch.save(sd, d / "tiny-v2.pt")
    return d, refs, sd


@pytest.fixture(scope="module")
def v2_safetensors(v2) -> Path:
    """The v2 checkpoint's tensors as ``tiny-v2.safetensors`` (what ``safetensors.torch.save_file`` writes)."""
    from safetensors.torch import save_file

    d, _, sd = v2
    save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(d / "tiny-v2.safetensors"))
    return d / "tiny-v2.safetensors"


@pytest.fixture(scope="module")
def v2_converted(v2):
    from mvforge.models.convert import convert_checkpoint

    d, _, _ = v2
    convert_checkpoint(d / "tiny-v2.pt", d / "out", d / "tiny-v2.yaml")
    return d / "out"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _unet_inputs(context_dim: int):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500, 10, 0])
    text = torch.randn(4, 77, context_dim, generator=g)
    cams = torch.randn(4, 16, generator=g)
    return x, t, text, cams


@torch.no_grad()
def test_v2_checkpoint_converts_to_the_same_model(v2, v2_converted):
    from mvforge.models.model import tokenize
    from mvforge.models.pipeline import MultiViewDiffusion

    _, refs, sd = v2
    mvd = MultiViewDiffusion.from_pretrained(v2_converted)
    # UNet: 4 views of one object with cameras (multi-view attention and the camera MLP both matter).
    x, t, text, cams = _unet_inputs(32)
    assert _max_diff(mvd.unet(x, t, text, cams, 4), refs["unet"](x, t, text, cams, 4)) < 1e-4
    # VAE decoder.
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    assert _max_diff(mvd.vae.decode(z).sample, refs["vae"].decode(z).sample) < 1e-4
    # Text: open_clip's own tower through the official penultimate-layer path; ids padded with 0 as in training.
    ids = tokenize(mvd.tokenizer, ["a red chair!!", ""])
    assert ids.shape == (2, 77) and int(ids[1, 2]) == 0 and int(ids[1, 1]) == 49407
    assert _max_diff(mvd.text_encoder(ids)[0], openclip_penultimate(refs["text"], ids)) < 1e-4
    assert (
        mvd.text_encoder.config.num_hidden_layers == 2 and mvd.text_encoder.config.num_attention_heads == 16
    )
    # Schedule: the scheduler's alphas_cumprod is the checkpoint's buffer; the official DDIM.
    assert _max_diff(mvd.scheduler.alphas_cumprod, sd["alphas_cumprod"]) < 1e-6
    ddim = json.loads((v2_converted / "scheduler" / "scheduler_config.json").read_text())
    assert ddim["_class_name"] == "DDIMScheduler" and ddim["beta_schedule"] == "scaled_linear"
    assert (ddim["clip_sample"], ddim["set_alpha_to_one"], ddim["prediction_type"]) == (
        False,
        False,
        "epsilon",
    )
    # Every key converted or listed as dropped, with the reason.
    record = json.loads((v2_converted / "conversion.json").read_text())
    assert set(record["dropped"]) == {
        k for k in sd if k.startswith("cond_stage_model.model.transformer.resblocks.2.")
    } | {
        "cond_stage_model.model.text_projection",
        "cond_stage_model.model.logit_scale",
    } | set(list(schedule_buffers())[2:])
    assert sum(record["converted"].values()) + len(record["dropped"]) + 2 == len(sd)
    card = (v2_converted / "README.md").read_text()
    assert "Licence" in card and "1e-4" in card and "peak RSS" in card


@torch.no_grad()
def test_v1_checkpoint_with_hf_clip_text_converts_to_the_same_model(tmp_path, monkeypatch):
    from transformers import CLIPTextConfig, CLIPTextModel

    from mvforge.models.convert import convert_checkpoint
    from mvforge.models.model import tokenize
    from mvforge.models.pipeline import MultiViewDiffusion

    torch.manual_seed(4)
    # FrozenCLIPEmbedder's tower: HF CLIP (ViT-L/14's 12 heads and QuickGELU), a tiny width and depth.
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=12,
            hidden_act="quick_gelu",
            vocab_size=49408,
            max_position_embeddings=77,
        )
    )
    perturb(text, 5)
    text.eval()
    # The official checkpoint was saved by an older transformers: every key under text_model.
    text_sd = {
        k if k.startswith("text_model.") else "text_model." + k: v for k, v in text.state_dict().items()
    }
    text_sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # held by the SD 1.5 checkpoint
    unet = _unet(48, 2, False, 6)
    sd = _checkpoint(unet, _vae(1), "cond_stage_model.transformer.", text_sd)
    torch.save(sd, tmp_path / "tiny-v1.pt")
    (tmp_path / "tiny-v1.yaml").write_text(YAML_V1)
    # Small shards here: the sharded layout (what a full-size conversion writes) must load the same.
    monkeypatch.setattr("mvforge.models.convert.SHARD_SIZE", "200KB")
    convert_checkpoint(tmp_path / "tiny-v1.pt", tmp_path / "out", tmp_path / "tiny-v1.yaml")
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert (tmp_path / "out" / "text_encoder" / "model.safetensors.index.json").is_file()
    mvd = MultiViewDiffusion.from_pretrained(tmp_path / "out")
    x, t, cond, cams = _unet_inputs(48)
    assert _max_diff(mvd.unet(x, t, cond, cams, 4), unet(x, t, cond, cams, 4)) < 1e-4
    ids = tokenize(mvd.tokenizer, ["a red chair"])
    assert int(ids[0, -1]) == 49407  # SD 1.x pads with <|endoftext|>, as its HF tokenizer did in training
    assert _max_diff(mvd.text_encoder(ids)[0], text(ids).last_hidden_state) < 1e-4
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert "cond_stage_model.transformer.text_model.embeddings.position_ids" in record["dropped"]


@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.output_blocks.1.1.conv.bias",
        "model.diffusion_model.camera_embed.2.bias",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
        "cond_stage_model.model.transformer.resblocks.1.mlp.c_fc.bias",
        "cond_stage_model.model.transformer.resblocks.2.ln_1.weight",
        "alphas_cumprod",
    ],
)
def test_a_missing_key_is_named(v2, tmp_path, key):
    from mvforge.models.convert import convert_checkpoint

    d, _, sd = v2
    assert key in sd
    torch.save({k: v for k, v in sd.items() if k != key}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="missing key " + key.replace(".", r"\.") + r"\b"):
        convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", d / "tiny-v2.yaml")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.input_blocks.1.1.extra.weight",
        "model.diffusion_model.label_emb.0.0.weight",
        "first_stage_model.encoder.down.0.extra",
        "cond_stage_model.model.transformer.resblocks.0.attn.extra",
        "cond_stage_model.model.transformer.resblocks.2.attn.extra",
        "ema_decay",
    ],
)
def test_an_unknown_key_is_named(v2, tmp_path, key):
    from mvforge.models.convert import convert_checkpoint

    d, _, sd = v2
    torch.save(sd | {key: torch.zeros(3)}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="unknown key " + key.replace(".", r"\.")):
        convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out", d / "tiny-v2.yaml")


class _Canary:
    """Unpickling this calls os.mkdir(path): a file that would run code when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def _cli(capsys, *args: str) -> tuple[int | None, str, str]:
    """Run the mvtrain entry point in this process; (exit code, stderr, stdout)."""
    from mvforge.cli.mvtrain import main

    argv = sys.argv
    sys.argv = ["mvtrain", *args]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return exc.value.code, captured.err, captured.out


def test_unsafe_truncated_and_foreign_files_are_refused_in_one_line(v2, v2_safetensors, tmp_path, capsys):
    """Each one line on stderr, exit 2, naming the file and the fix in full: before, a bare pickle printed
    torch's UserWarning and a refusal cut mid-word, a text file "(101)", a truncated file torch's text cut at
    "there is a high)"."""
    d, _, _ = v2
    canary = tmp_path / "canary"
    torch.save({"state_dict": {"x": _Canary(canary)}}, tmp_path / "evil.pt")
    # A bare pickle (protocol 4, as pickle.dumps writes): torch fails on its FRAME opcode before the global.
    (tmp_path / "evil-bare.pt").write_bytes(pickle.dumps({"x": _Canary(canary)}, protocol=4))
    good = (d / "tiny-v2.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save(torch.load(d / "tiny-v2.pt"), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "legacy-truncated.pt").write_bytes(legacy[: len(legacy) // 2])
    safe = v2_safetensors.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(safe[: len(safe) // 2])
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    (tmp_path / "text.ckpt").write_text("hello\n")
    (tmp_path / "text.safetensors").write_text("hello, a text file and not safetensors\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "model.txt").write_bytes(good)
    # name: (what the line says, the fix it ends with)
    cases = {
        "evil.pt": ("refused: loading it would import posix.mkdir", "from a source you trust"),
        "evil-bare.pt": ("refused: loading it would import posix.mkdir", "from a source you trust"),
        "truncated.pt": ("truncated.pt is not a complete torch checkpoint", "download it again"),
        "legacy-truncated.pt": (
            "legacy-truncated.pt is not a complete torch checkpoint",
            "download it again",
        ),
        "truncated.safetensors": ("is not a complete safetensors file", "download it again"),
        "notes.pt": ("notes.pt is not a torch checkpoint (it starts with text", "download it again"),
        "text.ckpt": ("text.ckpt is not a torch checkpoint (it starts with text", "download it again"),
        "text.safetensors": ("text.safetensors is not a safetensors file", "download it again"),
        "empty.pt": ("empty.pt is empty", "download it again"),
        "model.txt": ("use a .pt/.ckpt checkpoint or a .safetensors", "(got .txt)"),
        "absent.pt": ("absent.pt does not exist", "(nothing is downloaded)"),
    }
    if os.name != "posix":
        cases = {k: (m.replace("posix.", "nt."), f) for k, (m, f) in cases.items()}
    for name, (message, fix) in cases.items():
        code, err, _ = _cli(capsys, "convert", str(tmp_path / name), "--out", str(tmp_path / f"out-{name}"))
        assert code == 2, (name, err)
        assert err.count("\n") == 1 and err.startswith("error: "), (
            name,
            err,
        )  # no warning line, no traceback
        assert message in err and err.rstrip().endswith(fix), (name, err)  # the whole fix, nothing cut
        assert not (tmp_path / f"out-{name}").exists()
    assert not canary.exists()
    # The legacy (pre-zip) format itself is read (weights_only, without mmap).
    code, err, _ = _cli(
        capsys, "convert", str(tmp_path / "legacy.pt"), "--out", str(tmp_path / "out-legacy"),
        "--original-config", str(d / "tiny-v2.yaml"),
    )  # fmt: skip
    assert code in (0, None), err


def test_a_checkpoint_of_another_size_without_its_yaml_says_to_pass_it(v2, tmp_path, capsys):
    """Before: "missing key a model.diffusion_model.* key (converted name down_blocks.0.attentions.1...);
    the checkpoint is incomplete": garbled, and the checkpoint was complete, only not of the official size."""
    from mvforge.models.convert import convert_checkpoint

    d, _, _ = v2
    with pytest.raises(UserError) as exc:
        convert_checkpoint(d / "tiny-v2.pt", tmp_path / "out")
    message = str(exc.value)
    assert "do not match the official sd-v2-base architecture" in message, message
    assert message.endswith("pass --original-config with the checkpoint's LDM yaml"), message
    assert "missing key" not in message and "incomplete" not in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    code, err, _ = _cli(capsys, "convert", str(d / "tiny-v2.pt"), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and "--original-config" in err, err


def test_a_safetensors_copy_converts_to_the_same_pipeline_as_the_pt(
    v2, v2_converted, v2_safetensors, tmp_path
):
    """Before: "unknown key first_stage_model.decoder.mid.attn_1.k.weight (8 unconverted)": the source of the
    VAE's 1x1-conv attention weights (views the converter makes) was found by tensor identity, which
    safetensors' tensors do not share with their views; now by key name."""
    from safetensors.torch import load_file

    from mvforge.models.convert import convert_checkpoint

    d, _, _ = v2
    report = convert_checkpoint(v2_safetensors, tmp_path / "out", d / "tiny-v2.yaml")
    pt_record = json.loads((v2_converted / "conversion.json").read_text())
    assert report.converted == pt_record["converted"] and report.dropped == pt_record["dropped"]
    for sub in ("unet", "vae", "text_encoder"):
        files = sorted(p.name for p in (v2_converted / sub).iterdir())
        assert sorted(p.name for p in (tmp_path / "out" / sub).iterdir()) == files
        for name in files:
            a, b = v2_converted / sub / name, tmp_path / "out" / sub / name
            if name.endswith(".safetensors"):
                want, got = load_file(a), load_file(b)
                assert sorted(got) == sorted(want), (sub, name)
                for k in want:
                    assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (sub, k)
            else:
                assert b.read_text() == a.read_text(), (sub, name)


def test_the_same_convert_again_keeps_the_pipeline_and_anything_else_is_refused(
    v2, tmp_path, capsys, monkeypatch
):
    """docs/cli.md: the same command again keeps a finished output (exit 0, one line saying so) without
    reading the checkpoint; another source, yaml or dtype into it is refused in one line naming the fix.
    Before: the second run failed with "X is not empty; pass a new directory to --out"."""
    import mvforge.models.convert as convert_mod

    d, _, _ = v2
    src, out = tmp_path / "tiny.pt", tmp_path / "pipe"
    src.write_bytes((d / "tiny-v2.pt").read_bytes())
    args = ["convert", str(src), "--out", str(out), "--original-config", str(d / "tiny-v2.yaml")]
    code, err, _ = _cli(capsys, *args)
    assert code in (0, None), err
    done = json.loads((out / convert_mod.DONE_FILE).read_text())
    assert done["source"] == str(src.resolve()) and done["source_bytes"] == src.stat().st_size
    assert done["dtype"] == "fp32" and done["original_config"] == str((d / "tiny-v2.yaml").resolve())
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    def no_loading(path):
        raise AssertionError("a kept conversion must not read the checkpoint")

    monkeypatch.setattr(convert_mod, "load_state_dict", no_loading)
    code, err, stdout = _cli(capsys, *args)
    assert code in (0, None) and err == "", err
    assert stdout.count("\n") == 1 and "kept" in stdout, stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten
    assert not list(tmp_path.glob("pipe.tmp-*"))

    other_yaml = tmp_path / "other.yaml"
    other_yaml.write_text((d / "tiny-v2.yaml").read_text() + "\n# another recipe\n")
    changed = {
        "dtype": [*args, "--dtype", "fp16"],
        "original_config": [*args[:-1], str(other_yaml)],
        "source": ["convert", str(d / "tiny-v2.pt"), *args[2:]],
    }
    for setting, argv in changed.items():
        code, err, _ = _cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, (setting, err)
        assert f"({setting}" in err and "pass a new directory to --out" in err, (setting, err)
    # The same path, downloaded again (another modification time): another source.
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    code, err, _ = _cli(capsys, *args)
    assert code == 2 and "source_mtime_ns" in err, err
    # A non-empty directory that is no conversion.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine\n")
    code, err, _ = _cli(capsys, "convert", str(src), "--out", str(tmp_path / "other"))
    assert code == 2 and err.count("\n") == 1 and "pass a new directory to --out" in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_killed_conversions_copy_is_removed_by_the_next_run(v2, tmp_path, capsys, dead_pid):
    """A conversion killed mid-write leaves ``OUT.tmp-<pid>`` (gigabytes at SD size); the next run into the same
    OUT removes it and says so in one line, also when that run finds OUT finished and keeps it."""
    d, _, _ = v2
    out = tmp_path / "pipe"
    args = ["convert", str(d / "tiny-v2.pt"), "--out", str(out), "--original-config", str(d / "tiny-v2.yaml")]
    for finished in (False, True):
        leftover = tmp_path / f"pipe.tmp-{dead_pid}"
        (leftover / "unet").mkdir(parents=True)
        (leftover / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 4096)
        code, err, stdout = _cli(capsys, *args)
        assert code in (0, None), err
        assert f"removed {leftover}: the unfinished output of a killed conversion" in stdout, stdout
        assert ("kept as it is" in stdout) == finished, stdout
        assert not leftover.exists() and (out / "model_index.json").is_file()
        assert not list(tmp_path.glob("pipe.tmp-*"))


def test_cli_convert_then_sample_end_to_end(v2, tmp_path, capsys):
    d, _, _ = v2
    out = tmp_path / "pipe"
    # convert in this process (its output line), sample through the installed entry point.
    args = ["convert", str(d / "tiny-v2.pt"), "--out", str(out), "--original-config", str(d / "tiny-v2.yaml")]
    code, err, stdout = _cli(capsys, *args, "--dtype", "bf16")
    assert code in (0, None), err
    assert "peak RSS" in stdout and (out / "conversion.json").is_file()
    samp = subprocess.run(
        [MVTRAIN, "sample", "--model", str(out), "--prompt", "a chair", "--out", str(tmp_path / "views")]
        + ["--steps", "2", "--resolution", "64", "--device", "cpu"],
        capture_output=True,
        text=True,
    )
    assert samp.returncode == 0, samp.stderr
    from safetensors import safe_open

    with safe_open(out / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16  # --dtype bf16 (sampled in fp32)
    assert sorted(p.name for p in (tmp_path / "views").glob("view_*.png")) == [
        f"view_{i:02d}.png" for i in range(4)
    ]


def test_without_a_yaml_the_official_architecture_is_read_from_the_text_tower():
    from mvforge.models.convert import OFFICIAL_CONFIGS, load_original_config

    t = torch.zeros(1)
    assert load_original_config(None, {"cond_stage_model.model.positional_embedding": t})[0] == "sd-v2-base"
    assert load_original_config(None, {"cond_stage_model.transformer.text_model.x": t})[0] == "sd-v1"
    unet = OFFICIAL_CONFIGS["sd-v2-base"]["model"]["params"]["unet_config"]["params"]
    assert (unet["context_dim"], unet["num_head_channels"], unet["camera_dim"]) == (1024, 64, 16)
    with pytest.raises(UserError, match="--original-config"):
        load_original_config(None, {"model.diffusion_model.x": t})
