"""Configs from files and the command line: ``load`` reads a preset or a YAML/JSON file
and applies dotted overrides (``model.embed_dim=64``, typed by ``parse_overrides`` from
the field's annotation); ``cmac_core.config``'s dataclasses then judge every value.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cmac_core.config import ConfigError, PretrainConfig, preset, shown


def load(
    name_or_path: str, *, method: str | None = None, overrides: dict[str, Any] | None = None
) -> PretrainConfig:
    """A preset name (for ``method``, default cmac) or a YAML (``.yaml``/``.yml``) or JSON
    file (as saved into a run dir; ``method`` then replaces its loss.method; keys it leaves
    out take the defaults, which are ``base``'s), then ``overrides``
    (``{"section.field": value}``, as ``parse_overrides`` returns), then validation."""
    if name_or_path in ("tiny", "base"):
        cfg = preset(name_or_path, method=method or "cmac")
    else:
        cfg = _load_file(Path(name_or_path), name_or_path, method=method)
    return with_overrides(cfg, overrides or {})


def _load_file(path: Path, given: str, *, method: str | None) -> PretrainConfig:
    if not path.is_file():
        raise ConfigError(f"config {given!r} is neither tiny, base nor a YAML or JSON file",
                          cli=f"--config {given!r} is neither tiny, base nor a YAML or JSON file")  # fmt: skip
    data = _read_yaml(path) if path.suffix.lower() in (".yaml", ".yml") else _read_json(path)
    try:
        cfg = PretrainConfig.from_dict(data)
        return cfg.replace("loss", method=method) if method else cfg
    except ConfigError:
        raise
    except (AttributeError, TypeError, ValueError) as e:
        why = f"not a cmac_core config ({type(e).__name__}: {e}); see a run dir's config.json for the shape"
        raise ConfigError(f"config file {path}: {why}", cli=f"--config {path}: {why}") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"config file {path}: not JSON ({e})", cli=f"--config {path}: not JSON ({e})"
        ) from e


def _read_yaml(path: Path) -> Any:
    """The YAML file's data; a string in a field of another type (PyYAML reads ``1e-3``
    as one, YAML 1.1 wanting ``1.0e-3``) is read as ``parse_overrides`` reads a value."""
    try:
        import yaml  # noqa: PLC0415  (only YAML configs need it)
    except ImportError as e:
        why = "reading YAML needs PyYAML (pip install pyyaml); or give the config as JSON"
        raise ConfigError(f"config file {path}: {why}", cli=f"--config {path}: {why}") from e
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())[:160]
        raise ConfigError(
            f"config file {path}: not YAML ({first})", cli=f"--config {path}: not YAML ({first})"
        ) from e
    if not isinstance(data, dict):
        return data  # from_dict says it is not a config
    for section, values in data.items():
        kind = PretrainConfig.SECTIONS.get(section)
        if kind is None or not isinstance(values, dict):
            continue
        types = {f.name: f.type for f in dataclasses.fields(kind)}
        for name, value in values.items():
            if name in types and types[name] != "str":
                values[name] = _from_text(value, types[name], f"{section}.{name}")
    return data


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model.embed_dim=64", "data.crop_scale=0.5,1"]`` -> ``{"model.embed_dim": 64,
    "data.crop_scale": [0.5, 1.0]}``: each value typed as its field (int, float, bool as
    true/false/yes/no/on/off/1/0, a comma list for tuples, none/null where None is allowed,
    strings as written). Unknown keys, a key given twice and text that is not of the
    field's type are one-line ConfigErrors; ranges are judged later, by the dataclasses."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ConfigError(
                f"an override is section.field=value (as model.embed_dim=64), got {shown(item)}"
            )
        kind = _field_type(section, name)
        if key in out:
            raise ConfigError(f"{key} is given twice; give each setting once")
        out[key] = _from_text(text.strip(), kind, key)
    return out


def with_overrides(cfg: PretrainConfig, overrides: dict[str, Any]) -> PretrainConfig:
    """A copy of ``cfg`` with ``{"section.field": value}`` changed, validated again."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        _field_type(section, name)
        d[section][name] = value
    return PretrainConfig.from_dict(d) if overrides else cfg


def _field_type(section: str, name: str) -> str:
    """The annotation of ``section.name`` (``"int"``, ``"tuple[float, float]"``, ...)."""
    kinds = PretrainConfig.SECTIONS
    if section not in kinds:
        raise ConfigError(
            f"unknown config section {section!r} in {section}.{name} ({', '.join(kinds)})"
        )
    types = {f.name: f.type for f in dataclasses.fields(kinds[section])}
    if name not in types:
        near = difflib.get_close_matches(name, types, n=1)
        hint = f"did you mean {section}.{near[0]}?" if near else f"{section} has {', '.join(types)}"
        raise ConfigError(f"unknown setting {section}.{name} ({hint})")
    return types[name]


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _from_text(value: Any, kind: str, key: str) -> Any:
    """``value`` as the field type ``kind`` if it is text (a list: each element); other
    values are returned as they are, for the dataclass checks to judge."""
    if isinstance(value, list) and kind.startswith("tuple["):
        return [_from_text(v, kind[6:].split(",")[0].strip(" ]."), key) for v in value]
    if not isinstance(value, str) or kind == "str":
        return value
    text = value.strip()
    if kind.endswith(" | None"):
        if text.lower() in ("none", "null", "~"):
            return None
        kind = kind[: -len(" | None")]
    if kind.startswith("tuple["):
        parts = [p.strip() for p in text.strip("[]() ").split(",")]
        return _from_text([p for p in parts if p], kind, key)
    if kind == "bool":
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{key} must be true or false, got {shown(text)}")
    try:
        number = float(text)
    except ValueError:
        number = None
    if kind == "float" and number is not None:
        return number
    if kind == "int" and number is not None:
        try:
            return int(text)
        except ValueError:
            if number.is_integer():  # 1e6, 64.0
                return int(number)
    what = "an integer" if kind == "int" else "a number"
    raise ConfigError(f"{key} must be {what}, got {shown(text)}")
