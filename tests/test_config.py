from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mvforge import config
from mvforge.errors import ConfigError, UserError
from mvforge.render.config import RenderConfig


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    name: str = "x"


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    flag: bool = False
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[int, ...] = (1, 2)


def test_toml_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('steps = 5\n[inner]\nlr = 0.5\nname = "a"\n')
    cfg = config.load(Outer, f, ["inner.lr=2e-5", "flag=true", "sizes=[3, 4]", "path=/tmp/x"])
    assert cfg == Outer(steps=5, flag=True, path=Path("/tmp/x"), inner=Inner(lr=2e-5, name="a"), sizes=(3, 4))


def test_unknown_key_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="inner.lrr"):
        config.load(Outer, None, ["inner.lrr=1"])
    f = tmp_path / "c.toml"
    f.write_text("stepz = 1\n")
    with pytest.raises(ConfigError, match="stepz"):
        config.load(Outer, f)


@pytest.mark.parametrize("bad", ["steps=1.5", "flag=1", "inner=3", "steps", "inner.name=3"])
def test_wrong_types_rejected(bad):
    with pytest.raises(ConfigError):
        config.load(Outer, None, [bad])


def test_int_accepted_for_float_and_missing_file_error(tmp_path):
    assert config.load(Outer, None, ["inner.lr=1"]).inner.lr == 1.0
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(Outer, tmp_path / "nope.toml")


def test_round_trip_render_config(tmp_path):
    cfg = config.load(RenderConfig, None, ["cycles.samples=7", "cameras.views=4", "lighting.hdri_dir=/x"])
    f = tmp_path / "r.toml"
    f.write_text(config.to_toml(cfg))
    assert config.load(RenderConfig, f) == cfg
    with pytest.raises(ConfigError, match="not one of"):
        config.load(RenderConfig, None, ["cycles.view_transform=Fancy"])


def test_with_flags_sets_nested_fields_skips_none_and_type_checks():
    cfg = config.load(Outer, None, ["inner.name=fromfile", "steps=3"])
    out = config.with_flags(cfg, {"inner.lr": 0.5, "steps": None, "path": "/a"})
    assert out == Outer(steps=3, path=Path("/a"), inner=Inner(lr=0.5, name="fromfile"))
    assert config.set_field(out, "path", None).path is None
    with pytest.raises(ConfigError):
        config.with_flags(cfg, {"inner.lr": "fast"})


def test_first_difference_names_the_first_changed_key_and_skips_ignored_ones():
    from mvforge.config import first_difference

    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": {"f": 4}}
    assert first_difference(old, old) == ""
    assert first_difference(old, {**old, "b": {"c": 2, "d": 5}}) == "b.d was 3, now 5"
    assert first_difference(old, {**old, "b": {"c": 2}}) == "b.d was 3, now None"
    new = {"a": 9, "b": {"c": 2, "d": 3}, "e": {"f": 7}}
    assert first_difference(old, new, ignore=("a", "e.")) == ""
    assert first_difference(old, new, ignore=("e.",)) == "a was 1, now 9"


def test_load_builds_the_config_once_from_file_overrides_and_flags(tmp_path):
    """A flag that a cross-field check needs is applied before the check runs (flags win over --set)."""
    from mvforge.train.config import FitConfig

    with pytest.raises(UserError, match="needs validation.every > 0"):
        config.load(FitConfig, None, ["validation.loss_batches=1"])
    cfg = config.load(FitConfig, None, ["validation.loss_batches=1"], {"validation.every": 5, "out": None})
    assert (cfg.validation.every, cfg.validation.loss_batches) == (5, 1)
    assert config.load(FitConfig, None, ["max_steps=7"], {"max_steps": 9}).max_steps == 9
    # A --set that would be refused on its own is refused with the flag too, in the same words
    with pytest.raises(ConfigError, match="^validation: expected a table of settings, got 3$"):
        config.load(FitConfig, None, ["validation=3"], {"validation.every": 5})
    with pytest.raises(ConfigError, match="^validation.every: expected a single value"):
        config.load(FitConfig, None, ["validation.every.x=3"], {"validation.every": 5})


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=nan", "optim.lr: expected a finite number, got nan"),
        ("optim.lr=inf", "optim.lr: expected a finite number, got inf"),
        ("seed=-1", "seed: -1 is not a seed"),
        ('out=""', "out: the output directory is empty"),
    ],
)
def test_settings_no_run_can_mean_are_refused_in_every_config(override, message):
    from mvforge.train.config import FitConfig

    with pytest.raises(ConfigError, match=f"^{message}"):
        config.load(FitConfig, None, [override])


def test_an_empty_path_is_refused():
    from mvforge.eval.config import EvalConfig

    with pytest.raises(ConfigError, match="^clip_model_config: the path is empty"):
        config.load(EvalConfig, None, ['clip_model_config=""'])


def test_a_config_directory_is_named_as_one(tmp_path):
    with pytest.raises(ConfigError, match=rf"^--config {tmp_path} is a directory; pass a TOML file"):
        config.load(RenderConfig, tmp_path)
