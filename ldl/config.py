"""YAML configs with inheritance (`_base_`) and dotted command-line overrides.

Every key must exist in the package defaults (ldl/defaults.yaml): a typo is an error that
names the key, the file (or override) it came from and the closest valid key.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, OmegaConf

from ldl.schedule import SCHEDULE_KEYS, is_fraction

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
BASE_KEY = "_base_"


class ConfigError(ValueError):
    pass


def _flat_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            out[dotted] = value
            out.update(_flat_keys(value, dotted + "."))
    return out


def _check_keys(new: dict, schema: dict[str, Any], source: str) -> None:
    valid = list(schema)
    for key, value in _flat_keys(new).items():
        if key not in schema:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown config key '{key}'{hint}")
        _check_type(key, schema[key], value, source)


def _check_type(key: str, default: Any, value: Any, source: str) -> None:
    if default is None or value is None:
        return
    if key in SCHEDULE_KEYS and is_fraction(value):  # a fraction of training: 'a/b' or 'p%'
        return
    if isinstance(default, dict) != isinstance(value, dict):
        raise ConfigError(f"{source}: '{key}' must be {'a mapping' if isinstance(default, dict) else 'a value'}")
    numeric = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) == isinstance(value, bool)
    elif isinstance(default, numeric):
        ok = isinstance(value, numeric) and not (isinstance(default, int) and isinstance(value, float))
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"{source}: '{key}' expects {type(default).__name__} (default {default!r}), got {value!r}"
        )


def flatten(tree: dict, sep: str = ".") -> dict[str, Any]:
    """The leaves of a nested mapping under joined keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update({f"{key}{sep}{sub}": leaf for sub, leaf in flatten(value, sep).items()})
        else:
            out[str(key)] = value
    return out


def read_yaml(path: Path) -> dict:
    """A YAML file holding a mapping; a missing file or bad YAML raises ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return data


def _file_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The file and its bases, base-most first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular {BASE_KEY} chain")
    data = read_yaml(path)
    given = data.pop(BASE_KEY, [])
    bases = [given] if isinstance(given, str) else given
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path or a list of paths (relative to the file), "
                          f"got {given!r}")
    chain: list[tuple[Path, dict]] = []
    for base in bases:
        chain.extend(_file_chain(path.parent / base, seen + (path,)))
    chain.append((path, data))
    return chain


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


PROTOCOLS = ("shared", "paper")


def paper_recipe(method: str) -> dict:
    """The authors' recipe of a method (its file's PAPER_RECIPE)."""
    from ldl.methods import METHODS
    if method not in METHODS:
        raise ConfigError(f"unknown method.name '{method}'; available: {sorted(METHODS)}")
    return METHODS[method].PAPER_RECIPE


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Package defaults <- config file chain <- dotted overrides, every key checked.  Under
    `protocol: paper` the method's recipe goes between the files and the overrides: it replaces
    the files' optimiser, batch, augmentation and schedule settings, and an override still wins
    (e.g. an ablation of one setting)."""
    overrides = list(overrides)
    defaults = read_yaml(DEFAULTS_PATH)
    schema = _flat_keys(defaults)
    cfg = OmegaConf.create(defaults)
    if path is not None:
        for file_path, data in _file_chain(Path(path)):
            _check_keys(data, schema, str(file_path))
            cfg = OmegaConf.merge(cfg, data)
    resolved = _apply_overrides(cfg, schema, overrides)
    if resolved.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {resolved.protocol!r}")
    if resolved.protocol == "shared":
        return resolved
    recipe = paper_recipe(resolved.method.name)
    _check_keys(recipe, schema, f"paper recipe of {resolved.method.name}")
    return _apply_overrides(OmegaConf.merge(cfg, recipe), schema, overrides)


def _apply_overrides(cfg: DictConfig, schema: dict[str, Any], overrides: Iterable[str]) -> DictConfig:
    for text in overrides:
        key, value = parse_override(text)
        nested = _nest(key, value)
        _check_keys(nested, schema, f"override '{text}'")
        cfg = OmegaConf.merge(cfg, nested)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_from_dict(data: dict, overrides: Iterable[str] = ()) -> DictConfig:
    """Rebuild a config saved in a run folder or checkpoint, re-checked against the defaults,
    with dotted overrides applied on top (as `load_config` applies them)."""
    defaults = read_yaml(DEFAULTS_PATH)
    schema = _flat_keys(defaults)
    _check_keys(data, schema, "saved config")
    return _apply_overrides(OmegaConf.merge(OmegaConf.create(defaults), data), schema, overrides)
