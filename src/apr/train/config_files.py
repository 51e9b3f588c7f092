"""Config files onto dataclasses: YAML or TOML read, keys checked against the fields and typed
by each field's own type, sections as nested dataclasses, `--set a.b=value` overrides, and
the keys a class used to call otherwise (its `RENAMED`) read with a deprecation warning.
Unknown keys and wrong types are `UserError`s naming the key. Generic: the training configs
themselves are `apr.train.config`.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
import types
import typing
from pathlib import Path

import yaml

from apr.errors import UserError

log = logging.getLogger(__name__)


def _coerce(value, tp, key: str):
    """`value` as type `tp` (int, float, str, bool, a dataclass, or X | None), else UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config: `{key}` must be a section (a mapping)")
        try:
            return _build(tp, value, key + ".")
        except UserError as e:
            raise in_section(e, key) from None
    if tp is float and isinstance(value, str):  # YAML reads `5e-5` (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise UserError(f"config: `{key}` must be {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def in_section(e: UserError, section: str) -> UserError:
    """An error of a section's dataclass (`child_budget` ...) as a config error (`rollout.child_budget`)."""
    if not e.fields:
        return e
    message = e.renamed({name: f"`{section}.{name}`" for name in e.fields})
    return UserError(message if message.startswith("config: ") else "config: " + message)


def renamed_keys(cls, values: dict) -> dict:
    """`values` with the old keys of `cls` (its RENAMED) moved to their new places, each with a
    deprecation warning. A key given both ways is an error unless the two agree (bools: either
    true is true, as an old SFT config's `sub_call_budget` and `token_budget` are merged)."""
    out = dict(values)
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old not in out:
            continue
        value = out.pop(old)
        value = None if value == "" else value  # the old `method: ""` meant: from the model
        log.warning(f"config: `{old}` is deprecated; use `{new}`")
        *sections, last = new.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"config: `{part}` must be a section (a mapping)")
        if last in node and node[last] != value:
            if not (isinstance(value, bool) and isinstance(node[last], bool)):
                raise UserError(f"config: `{old}` (deprecated) and `{new}` disagree; keep `{new}` only")
            value = value or node[last]
        node[last] = value
    return out


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            raise UserError(f"config: unknown key `{prefix}{k}` (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def _parse_set(item: str, cls) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], value typed by the field a.b of `cls`)."""
    if "=" not in item:
        raise UserError(f"`set` expects key=value, got {item!r}", fields=("set",))
    key, raw = item.split("=", 1)
    key = key.strip()
    if key in getattr(cls, "RENAMED", {}):
        log.warning(f"config: `{key}` is deprecated; use `{cls.RENAMED[key]}`")
        key, raw = cls.RENAMED[key], raw if raw.strip() else "null"  # the old `method=` meant: from the model
    parts = key.split(".")
    tp = cls
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        if part not in fields:
            raise UserError(f"`set`: unknown key `{'.'.join(parts[: i + 1])}`", fields=("set",))
        tp = typing.get_type_hints(tp)[part]
    if tp is str:
        return parts, raw  # strings are taken verbatim: `--set data=123.jsonl`
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return parts, value


def load_dataclass(cls, path: str | Path | None, overrides: list[str] = ()):
    """Read a YAML or TOML file into dataclass `cls`, apply `--set` overrides, and validate it."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError("no such config file", str(path))
        text = path.read_text(encoding="utf-8")
        try:
            values = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"invalid config: {str(e).splitlines()[0]}", str(path)) from None
        values = values or {}
        if not isinstance(values, dict):
            raise UserError("config must be a mapping of keys to values", str(path))
        values = renamed_keys(cls, values)
    for item in overrides:
        parts, value = _parse_set(item, cls)
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    config = _build(cls, values)
    config.validate()
    return config


def dump_config(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
