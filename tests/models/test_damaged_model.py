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


@pytest.mark.parametrize(
    "damaged",
    [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/tokenizer_config.json",
    ],
)
def test_a_damaged_json_in_a_pipeline_is_one_line_naming_it(tiny_mv, tmp_path, damaged):
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_mv, pipe)
    (pipe / damaged).write_text("{bad")
    with pytest.raises(
        UserError, match=rf"^{pipe / damaged}: damaged \(JSONDecodeError.*copy the model again"
    ):
        MultiViewDiffusion.from_pretrained(pipe)


@pytest.mark.parametrize("part", ["unet", "text_encoder"])
def test_a_missing_weights_file_names_its_folder(tiny_mv, tmp_path, part):
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_mv, pipe)
    for weights in (pipe / part).glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UserError, match=rf"^{pipe / part} holds config.json but no weights file"):
        MultiViewDiffusion.from_pretrained(pipe)


def _fit_run(tiny_mv, run, steps=(1, 2)):
    """A run directory laid out as `mvtrain fit` writes it: committed checkpoints holding the trained UNet and
    the config.toml naming the model the frozen parts come from."""
    for step in steps:
        ckpt = run / "checkpoints" / f"step-{step:06d}"
        shutil.copytree(tiny_mv / "unet", ckpt / "unet")
        (ckpt / "config.toml").write_text(f'pretrained = "{tiny_mv}"\n')
        (ckpt / "COMMITTED").write_text(f"{step}\n")
    return [run / "checkpoints" / f"step-{s:06d}" for s in steps]


def test_a_run_loads_its_newest_whole_committed_checkpoint_and_names_those_passed_over(
    tiny_mv, tmp_path, capsys
):
    from mvforge.models.resolve import resolve_model

    step1, step2 = _fit_run(tiny_mv, tmp_path / "run")
    assert resolve_model(tmp_path / "run") == step2
    (step2 / "COMMITTED").unlink()  # renamed into place, the marker not yet written
    assert resolve_model(tmp_path / "run") == step1
    assert f"skipping damaged checkpoint ({step2} has no COMMITTED" in capsys.readouterr().err
    (step2 / "COMMITTED").write_text("2\n")
    (step2 / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    model = MultiViewDiffusion.from_pretrained(tmp_path / "run")
    err = capsys.readouterr().err
    assert f"({step2 / 'unet'} holds config.json but no weights file" in err and f"loading {step1}" in err
    assert err.count("skipping") == 1 and model.unet is not None  # said once, though resolved twice
    shutil.rmtree(step1)
    with pytest.raises(UserError, match="no intact checkpoint in"):
        resolve_model(tmp_path / "run")


def test_a_checkpoint_config_damaged_or_naming_a_model_not_here_is_one_line(tiny_mv, tmp_path):
    from mvforge.models.resolve import resolve_model

    (ckpt,) = _fit_run(tiny_mv, tmp_path / "run", steps=(1,))
    (ckpt / "config.toml").write_text('pretrained = "/elsewhere/world-sd"\n')
    with pytest.raises(
        UserError, match=r"config.toml names pretrained = '/elsewhere/world-sd', which does not"
    ):
        MultiViewDiffusion.from_pretrained(ckpt)
    (ckpt / "config.toml").write_text("pretrained = [\n")
    with pytest.raises(UserError, match=r"config.toml: damaged \(TOMLDecodeError"):
        MultiViewDiffusion.from_pretrained(ckpt)
    with pytest.raises(UserError, match=r"model_index.json is a file; pass"):
        resolve_model(tiny_mv / "model_index.json")
