"""Config: _BASE_ inheritance, overrides, type errors, resolved copy, no dead keys; MODEL.DEVICE."""
from __future__ import annotations

import os
import re

import pytest
import torch

from conftest import REPO

from configs import get_cfg_defaults, load_config
from configs.loader import ConfigError, setup_config
from utils.device import resolve_device
from utils.errors import ShipReIDError


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yml").write_text("MODEL:\n  DEPTH: 6\n  MIE_COE: 2.5\nSOLVER:\n  BASE_LR: 0.01\n")
    (tmp_path / "child.yml").write_text("_BASE_: base.yml\nMODEL:\n  DEPTH: 8\n")
    cfg = load_config(str(tmp_path / "child.yml"), ["SOLVER.BASE_LR", "0.5", "MODEL.STRIDE_SIZE", "[12,12]",
                                                    "TEST.FEAT_NORM", "False", "MODEL.MLP_RATIO", "2"])
    assert cfg.MODEL.DEPTH == 8 and cfg.MODEL.MIE_COE == 2.5 and cfg.SOLVER.BASE_LR == 0.5
    assert cfg.MODEL.STRIDE_SIZE == [12, 12] and cfg.TEST.FEAT_NORM is False and cfg.MODEL.MLP_RATIO == 2.0


def test_errors_name_the_key_and_the_source(tmp_path):
    (tmp_path / "bad.yml").write_text("MODEL:\n  NOT_A_KEY: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yml.*MODEL.NOT_A_KEY"):
        load_config(str(tmp_path / "bad.yml"))
    with pytest.raises(ConfigError, match="MODEL.DEPTH"):
        load_config(None, ["MODEL.DEPTH", "abc"])
    with pytest.raises(ConfigError, match="MODEL.DEPTH"):
        load_config(None, ["MODEL.DEPTH", "2.5"])
    with pytest.raises(ConfigError, match="no value"):
        load_config(None, ["MODEL.DEPTH"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yml"))


def test_resolved_config_is_written_and_reloads(tmp_path):
    class Args:
        config_file = os.path.join(REPO, "configs", "hoss", "transoss.yml")
        opts = ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEPTH", "3"]
    cfg = setup_config(Args())
    assert load_config(str(tmp_path / "out" / "config.yaml")) == cfg
    blocker = tmp_path / "file"
    blocker.write_text("")
    Args.opts = ["OUTPUT_DIR", str(blocker / "sub")]
    with pytest.raises(ConfigError, match="OUTPUT_DIR"):
        setup_config(Args())


def leaf_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_every_key_is_read_somewhere():
    sources = ""
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".venv", "tests", "configs", ".git")]
        sources += "".join(open(os.path.join(folder, f)).read() for f in files if f.endswith(".py"))
    dead = [key for key in leaf_keys(get_cfg_defaults())
            if not re.search(r"\." + re.escape(key.split(".")[-1]) + r"\b", sources)]
    assert not dead, f"config keys that no code reads: {dead}"


def test_every_recipe_loads():
    for folder, _, files in os.walk(os.path.join(REPO, "configs")):
        for name in files:
            if name.endswith(".yml"):
                load_config(os.path.join(folder, name))


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ShipReIDError, match="MODEL.DEVICE"):
            resolve_device("cuda")
    with pytest.raises(ShipReIDError, match="MODEL.DEVICE"):
        resolve_device("nonsense")
