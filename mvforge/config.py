"""Typed configs: frozen dataclasses filled from a TOML file plus repeatable ``--set a.b=c`` overrides.

Unknown keys are an error (a typo must never be silently ignored), values are type-checked against the
dataclass annotations, and a resolved config can be written back as TOML next to a stage's outputs. Checks every
config shares: numbers are finite (TOML and ``--set`` accept ``nan`` and ``inf``; no setting means them), a
``seed`` is an integer in [0, 2**63), and a path (a ``Path`` field, or ``out``) is not the empty string, which
would mean the current directory.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from mvforge.errors import ConfigError

T = TypeVar("T")


def _parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (numbers, bools, lists, quoted strings), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Return a copy of ``data`` with each ``a.b=c`` override applied (nested tables created as needed)."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {item!r}: write it as --set section.key=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"bad override {item!r}: {part!r} is a value, not a section")
        node[parts[-1]] = _parse_value(value.strip())
    return out


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        if str(value) == "":
            raise ConfigError(
                f"{where}: the path is empty; pass a file or directory (or leave the setting out)"
            )
        return Path(value)
    return value


def check_seed(seed: int, where: str = "seed") -> None:
    """Raise ConfigError unless ``seed`` is in [0, 2**63), the range every seed of mvforge (torch's, numpy's)
    takes as given."""
    if not 0 <= seed < 2**63:
        raise ConfigError(f"{where}: {seed} is not a seed; pass an integer from 0 to 2**63 - 1")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; known keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], key)
        if name == "seed" and isinstance(kwargs[name], int):
            check_seed(kwargs[name], key)
        if name == "out" and kwargs[name] == "":
            raise ConfigError(f"{key}: the output directory is empty; pass a directory")
    return cls(**kwargs)


def load(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> T:
    """Config ``cls`` from an optional TOML file, ``a.b=c`` overrides (applied after the file) and command-line
    ``flags`` (dotted field -> value, None: not given; applied last, flags win). The config is built once from
    all three, so its checks see the settings as merged: ``--validate-every 5`` with
    ``--set validation.loss_batches=2`` is one consistent config, not a refused intermediate one."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {path} is a directory; pass a TOML file of this command's settings")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file to --config")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML ({e}); fix the syntax") from None
    data = apply_overrides(data, overrides)
    for dotted, value in (flags or {}).items():
        if value is not None:
            *parents, leaf = dotted.split(".")
            table, where = data, []
            for part in parents:
                where.append(part)
                if not isinstance(table.get(part, {}), dict):
                    got = table[part]
                    raise ConfigError(f"{'.'.join(where)}: expected a table of settings, got {got!r}")
                table = table.setdefault(part, {})
            if isinstance(table.get(leaf), dict) and not isinstance(value, dict):
                # --set gave a table where the flag sets one value: refused as it would be without the flag
                raise ConfigError(f"{dotted}: expected a single value, got the table {table[leaf]!r}")
            table[leaf] = value
    return from_dict(cls, data)


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that also type-checks the changed values."""
    hints = typing.get_type_hints(type(cfg))
    checked = {k: _coerce(v, hints[k], k) for k, v in changes.items()}
    return dataclasses.replace(cfg, **checked)


def set_field(cfg: T, dotted: str, value: Any, _where: str | None = None) -> T:
    """``cfg`` with the (possibly nested) field ``dotted`` (``"cycles.samples"``) replaced, type-checked; a bad
    value's ConfigError names the whole dotted key."""
    head, _, rest = dotted.partition(".")
    if not rest:
        hints = typing.get_type_hints(type(cfg))
        return dataclasses.replace(cfg, **{head: _coerce(value, hints[head], _where or dotted)})
    return dataclasses.replace(cfg, **{head: set_field(getattr(cfg, head), rest, value, _where or dotted)})


def with_flags(cfg: T, flags: dict[str, Any]) -> T:
    """Apply command-line flags (dotted field -> value) on top of a loaded config; None means "not given".

    The one way every command lets its flags override ``--config`` / ``--set`` (flags win).
    """
    for dotted, value in flags.items():
        if value is not None:
            cfg = set_field(cfg, dotted, value)
    return cfg


def to_dict(cfg: Any) -> dict:
    """Plain dict of a dataclass config (paths as strings, tuples as lists, None dropped: TOML has no null)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {
                f.name: conv(getattr(v, f.name))
                for f in dataclasses.fields(v)
                if getattr(v, f.name) is not None
            }
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items() if x is not None}
        return v

    return conv(cfg)


def first_difference(old: dict, new: dict, ignore: tuple[str, ...] = (), prefix: str = "") -> str:
    """The first setting (sorted, depth first) whose value differs between two ``to_dict`` trees, as
    ``"key.sub was OLD, now NEW"``; "" when none does. ``ignore``: dotted keys (or key prefixes ending in ``.``)
    that may differ. The one comparison behind every stage's "resume only with the same settings" check, which
    stages call through ``rundir.settings_difference`` / ``rundir.check_resume`` (they add the one list of
    execution settings, ``rundir.EXECUTION_KEYS``)."""
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if dotted in ignore or any(i.endswith(".") and dotted.startswith(i) for i in ignore):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, ignore, f"{dotted}.")
            if found:
                return found
        elif a != b:
            return f"{dotted} was {_as_written(a)}, now {_as_written(b)}"
    return ""


def _as_written(value: Any) -> str:
    """A setting's value as a config file or flag spells it (true/false, not Python's True/False)."""
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def to_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))
