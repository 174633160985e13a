"""Where a result came from: code version, libraries, hardware, and the exact configuration of the run.

`record_run` is called once per run by processor.setup.setup_run, which holds the parsed command line;
`provenance(cfg)` is what every results file stores under "provenance".
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata

import torch

from utils.distributed import world_size
from utils.errors import ShipReIDError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNKNOWN = "unknown"
LIBRARIES = ("torch", "torchvision", "timm")

_run: dict | None = None  # what record_run saw for the run of this process


def config_sha256(cfg) -> str:
    return hashlib.sha256(cfg.dump().encode()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict:
    """{"commit", "dirty"} of the checkout this code runs from; "unknown" for both when it is not a git checkout
    (an unpacked archive, or a folder inside some other repository)."""
    top = _git("rev-parse", "--show-toplevel")
    commit = _git("rev-parse", "HEAD")
    if top is None or commit is None or os.path.realpath(top.strip()) != os.path.realpath(REPO):
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    status = _git("status", "--porcelain")
    return {"commit": commit.strip(), "dirty": UNKNOWN if status is None else bool(status.strip())}


def library_versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description(device: torch.device) -> dict:
    """The device this process computes on: its type, name, and how many of that type the process sees."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": torch.cuda.device_count()}
    return {"type": device.type, "name": platform.processor() or platform.machine() or device.type, "count": 1}


def record_run(cfg, config_file: str, overrides: list[str], device: torch.device) -> None:
    """Remember the run's command line and environment (git is read now: the code that runs is the code at start)."""
    global _run
    _run = {
        "git": git_state(),
        "versions": library_versions(),
        "device": device_description(device),
        "world_size": world_size(),
        "config_file": os.path.abspath(config_file) if config_file else None,
        "overrides": list(overrides),
        "config_sha256": config_sha256(cfg),
    }


def provenance(cfg) -> dict:
    """The "provenance" record of a results file written for `cfg`, the run's resolved configuration."""
    if _run is None:
        raise ShipReIDError("no run recorded: results files are written by runs that processor.setup.setup_run set up")
    if _run["config_sha256"] != config_sha256(cfg):
        raise ShipReIDError("the results being written are not for the configuration this process's run was set up "
                            "with (its config sha256 differs): set the run up with processor.setup.setup_run first")
    return {**_run, "amp": cfg.SOLVER.AMP, "seed": cfg.SEED}
