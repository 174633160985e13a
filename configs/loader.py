"""Load a YAML config with `_BASE_` inheritance and `KEY VALUE` overrides onto the YACS defaults."""
from __future__ import annotations

import argparse
import ast
import os
import re
from typing import Any, Iterable

import yaml
from yacs.config import CfgNode as CN

from utils.errors import ShipReIDError

from .defaults import get_cfg_defaults

BASE_KEY = "_BASE_"
# list keys whose length is free; every other list keeps the length of its default (sizes, strides, ...)
VARIABLE_LENGTH_KEYS = ("DATASETS.PROTOCOLS", "LOSS.TERMS", "LOSS.WEIGHTS", "SOLVER.NO_DECAY_KEYS", "BBDM.CHANNEL_MULT",
                        "BBDM.ATTENTION_LEVELS")


class ConfigError(ShipReIDError):
    """A config file or override that does not fit the defaults."""


def _as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Return `value` converted to the type of `default`, or raise naming the key and its source."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, (int, float)) and not isinstance(value, bool):
        number = value if isinstance(value, (int, float)) else _as_number(value)
        if number is not None and (isinstance(default, float) or float(number).is_integer()):
            return type(default)(number)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        if key in VARIABLE_LENGTH_KEYS:
            element = default[0] if default else None
            return [v if element is None else _coerce(v, element, f"{key}[{i}]", source) for i, v in enumerate(value)]
        if len(value) == len(default):
            return [_coerce(v, d, f"{key}[{i}]", source) for i, (v, d) in enumerate(zip(value, default))]
        raise ConfigError(f"{source}: {key} takes exactly {len(default)} values like {list(default)!r}, got {value!r}")
    raise ConfigError(f"{source}: {key} must be a {type(default).__name__} like {default!r}, got {value!r}")


def _merge(cfg: CN, updates: dict, source: str, prefix: str = "") -> None:
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in cfg:
            raise ConfigError(f"{source}: unknown config key {key}; see configs/defaults.py for the valid keys")
        if isinstance(cfg[name], CN):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} is a group of keys, got the value {value!r}")
            _merge(cfg[name], value, source, key + ".")
        else:
            cfg[name] = _coerce(value, cfg[name], key, source)


def _read_yaml(path: str, seen: tuple = ()) -> list[tuple[str, dict]]:
    """The chain of (file, mapping) from the outermost `_BASE_` to `path` itself."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _BASE_ cycle through {' -> '.join(seen)}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = _load_yaml(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    chain = []
    base = data.pop(BASE_KEY, None)
    if base:
        chain = _read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,))
    return chain + [(path, data)]


class _ConfigYamlLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which would turn
    `AMP: off` or `DFL: off` (string keys whose value is the word "off") into False."""


_ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_ConfigYamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                        list("tTfF"))


def _load_yaml(text) -> Any:
    return yaml.load(text, Loader=_ConfigYamlLoader)


def parse_override(text: str) -> Any:
    """A Python literal (`5e-4`, `['id', 'triplet']`), a YAML flow list (`[id,triplet]`), or the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if text.strip().startswith("["):
        try:
            return _load_yaml(text)
        except yaml.YAMLError:
            pass
    return text


def merge_overrides(cfg: CN, opts: Iterable[str]) -> None:
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides come as KEY VALUE pairs; '{opts[-1]}' has no value")
    for key, text in zip(opts[0::2], opts[1::2]):
        *groups, leaf = key.split(".")
        node: Any = {}
        nested = node
        for group in groups:
            nested[group] = {}
            nested = nested[group]
        nested[leaf] = parse_override(text)
        _merge(cfg, node, "command line")


def load_config(config_file: str | None = None, opts: Iterable[str] = ()) -> CN:
    """Defaults, then the file chain (bases first), then the overrides; returned frozen."""
    cfg = get_cfg_defaults()
    if config_file:
        for path, data in _read_yaml(config_file):
            _merge(cfg, data, path)
    merge_overrides(cfg, opts)
    cfg.freeze()
    return cfg


def save_config(cfg: CN, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "config.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    return path


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config_file", default="", help="YAML config (may name a _BASE_)")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. MODEL.DEVICE cpu SOLVER.BASE_LR 0.001")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Flags (e.g. --resume) may come before, between or after the KEY VALUE overrides."""
    return parser.parse_intermixed_args(argv)


def write_config(cfg: CN) -> str:
    """Save the resolved config to OUTPUT_DIR/config.yaml, or say clearly why OUTPUT_DIR is unusable."""
    try:
        return save_config(cfg, cfg.OUTPUT_DIR)
    except OSError as err:
        raise ConfigError(f"OUTPUT_DIR {cfg.OUTPUT_DIR!r} cannot be written ({err.strerror}); "
                          "choose a writable folder with OUTPUT_DIR <path>") from None


def setup_config(args: argparse.Namespace, write: bool = True) -> CN:
    """Load the config from parsed arguments and (with `write`) save the resolved copy to OUTPUT_DIR."""
    cfg = load_config(args.config_file or None, args.opts)
    if write:
        write_config(cfg)
    return cfg
