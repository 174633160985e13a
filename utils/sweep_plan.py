"""A sweep's plan: a recipe run over the product of override sets (--grid) x seeds, one run folder each, and the
manifest (<out>/sweep.json) that ties an output folder to one plan."""
from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass

from configs.loader import load_config, parse_override

from .errors import ShipReIDError

MANIFEST = "sweep.json"
RESERVED_KEYS = ("SEED", "OUTPUT_DIR")  # set per run by the sweep
NO_GRID_SETTING = "base"
_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-\[\]]")
MAX_FOLDER_NAME = 200


class SweepError(ShipReIDError):
    """A sweep that cannot start or continue (bad arguments, another sweep's folder) or whose runs failed."""


@dataclass(frozen=True)
class Setting:
    name: str                    # "MODEL.SSE=True,LOSS.TERMS=[id,triplet]", or "base" without --grid
    overrides: tuple[str, ...]   # KEY VALUE pairs given to train.py
    folder: str                  # the name on disk: `name` with characters unsafe in paths replaced by "_"


@dataclass(frozen=True)
class Run:
    setting: Setting
    seed: int
    path: str                    # OUTPUT_DIR: <out>/<setting folder>/seed_<seed>

    @property
    def label(self) -> str:
        return f"{self.setting.name} seed {self.seed}"


def render_value(value) -> str:
    """The override text of one grid value, as it would be typed: True, 0.0005, off, [256,128], [id,triplet]."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    return str(value)


def parse_grid(text: str) -> tuple[str, list[str]]:
    """`--grid "KEY [v1,v2,...]"` -> (KEY, the values' override texts). The list is read as a command-line override
    is (a Python literal, else a YAML flow list), so a value means what it would mean as `KEY VALUE`."""
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise SweepError(f"--grid {text!r}: expected \"KEY [value1,value2,...]\", "
                         "e.g. --grid \"MODEL.SSE [True,False]\"")
    key, listed = parts
    values = parse_override(listed.strip())
    if not isinstance(values, list) or not values:
        raise SweepError(f"--grid {text!r}: the values must be a non-empty list like [True,False], got {listed!r}")
    texts = []
    for value in values:
        rendered = render_value(value)
        if parse_override(rendered) != value:
            raise SweepError(f"--grid {text!r}: the value {value!r} does not survive as the override text "
                             f"{rendered!r}; give it in a form that reads back the same")
        texts.append(rendered)
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise SweepError(f"--grid {text!r}: the value(s) {', '.join(repeated)} appear more than once")
    return key, texts


def seed_values(count: int | None, listed: str | None) -> list[int]:
    """--seeds N gives SEED 0..N-1; --seed_list "3,7,11" gives those values, in that order."""
    if (count is None) == (listed is None):
        raise SweepError("give either --seeds N (SEED 0..N-1) or --seed_list S1,S2,... (those SEED values)")
    if count is not None:
        if count < 1:
            raise SweepError(f"--seeds must be at least 1, got {count}")
        return list(range(count))
    try:
        seeds = [int(s) for s in listed.split(",")]
    except ValueError:
        raise SweepError(f"--seed_list must be integers separated by commas, e.g. 0,1,2; got {listed!r}") from None
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seed_list {listed!r} names a seed more than once")
    return seeds


def _setting(pairs: list[tuple[str, str]]) -> Setting:
    if not pairs:
        return Setting(NO_GRID_SETTING, (), NO_GRID_SETTING)
    name = ",".join(f"{k}={v}" for k, v in pairs)
    return Setting(name, tuple(x for pair in pairs for x in pair), _FOLDER_UNSAFE.sub("_", name))


@dataclass
class Plan:
    config_file: str
    grid: list[tuple[str, list[str]]]   # (KEY, values) per --grid, in the order given
    seeds: list[int]
    overrides: list[str]                # KEY VALUE pairs every run gets
    out: str

    def settings(self) -> list[Setting]:
        keys = [key for key, _ in self.grid]
        return [_setting(list(zip(keys, combo))) for combo in itertools.product(*(v for _, v in self.grid))]

    def runs(self) -> list[Run]:
        """Setting by setting (in grid order), each setting's seeds in order."""
        return [Run(s, seed, os.path.join(self.out, s.folder, f"seed_{seed}"))
                for s in self.settings() for seed in self.seeds]

    def train_args(self, run: Run) -> list[str]:
        """train.py's arguments for `run` (without --resume)."""
        return ["--config_file", self.config_file, *self.overrides, *run.setting.overrides,
                "SEED", str(run.seed), "OUTPUT_DIR", os.path.abspath(run.path)]

    def manifest(self) -> dict:
        return {"config_file": self.config_file, "grid": [{"key": k, "values": v} for k, v in self.grid],
                "seeds": self.seeds, "overrides": self.overrides}


def make_plan(config_file: str, grids: list[str], seeds: list[int], overrides: list[str], out: str) -> Plan:
    """A checked plan: every run's config loads and passes train.py's start-up checks (unknown keys, bad values,
    grids that cannot run are refused before anything runs)."""
    from configs.checks import check_config  # imports torch: only the run path needs it, not the report
    if not config_file:
        raise SweepError("--config_file is required: the recipe every run of the sweep trains")
    if not os.path.isfile(config_file):
        raise SweepError(f"--config_file {config_file}: no such file")
    if len(overrides) % 2:
        raise SweepError(f"the overrides after the flags come as KEY VALUE pairs; {overrides[-1]!r} has no value")
    grid = [parse_grid(text) for text in grids]
    fixed = overrides[0::2]
    for key in fixed + [k for k, _ in grid]:
        if key in RESERVED_KEYS:
            raise SweepError(f"{key} is set by the sweep for every run (SEED from --seeds/--seed_list, OUTPUT_DIR "
                             "under --out); leave it out of the overrides and --grid")
    for key in set(fixed):
        if fixed.count(key) > 1:
            raise SweepError(f"the override {key} is given more than once")
    grid_keys = [k for k, _ in grid]
    for key in grid_keys:
        if grid_keys.count(key) > 1:
            raise SweepError(f"--grid names {key} more than once; list all its values in one --grid")
        if key in fixed:
            raise SweepError(f"{key} is both in --grid and a fixed override; give it in one place")
    plan = Plan(os.path.normpath(config_file), grid, list(seeds), list(overrides), out)
    folders: dict[str, str] = {}
    for setting in plan.settings():
        if len(setting.folder) > MAX_FOLDER_NAME:
            raise SweepError(f"the setting {setting.name} makes a folder name longer than {MAX_FOLDER_NAME} "
                             "characters; sweep fewer keys at once")
        if setting.folder in folders:
            raise SweepError(f"the settings {folders[setting.folder]} and {setting.name} would share the folder "
                             f"{setting.folder}; use values that differ in letters, digits or . _ = , + - [ ]")
        folders[setting.folder] = setting.name
        try:
            check_config(load_config(config_file, [*overrides, *setting.overrides]))
        except ShipReIDError as err:
            raise SweepError(f"the setting {setting.name} cannot run: {err}") from None
    return plan


def _checked_manifest(data, path: str) -> dict:
    fields = {"config_file": str, "grid": list, "seeds": list, "overrides": list}
    if not isinstance(data, dict) or set(data) != set(fields) or any(
            not isinstance(data[k], t) for k, t in fields.items()):
        raise SweepError(f"{path}: not a sweep manifest (expected the keys {', '.join(fields)}); "
                         "was it written by tools/sweep.py?")
    for entry in data["grid"]:
        if not (isinstance(entry, dict) and set(entry) == {"key", "values"} and isinstance(entry["values"], list)):
            raise SweepError(f"{path}: grid entries must be {{\"key\": ..., \"values\": [...]}}, got {entry!r}")
    return data


def read_manifest(out: str) -> dict:
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        raise SweepError(f"{out} has no {MANIFEST}: not a sweep folder (tools/sweep.py writes it when a sweep starts)")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise SweepError(f"{path}: not valid JSON ({err})") from None
    return _checked_manifest(data, path)


def load_plan(out: str) -> Plan:
    """The plan an existing sweep folder was made for (its runs' folders), from its manifest."""
    data = read_manifest(out)
    grid = [(entry["key"], list(entry["values"])) for entry in data["grid"]]
    return Plan(data["config_file"], grid, list(data["seeds"]), list(data["overrides"]), out)


def claim_folder(plan: Plan, write: bool = True) -> bool:
    """Check that an existing <out>/sweep.json is this plan's, or (with `write`) write it for a new sweep; True
    when there was none."""
    path = os.path.join(plan.out, MANIFEST)
    wanted = plan.manifest()
    if os.path.exists(path):
        found = read_manifest(plan.out)
        if found != wanted:
            differences = "; ".join(f"{key}: {found[key]!r} there, {wanted[key]!r} now"
                                    for key in wanted if found[key] != wanted[key])
            raise SweepError(f"{path} belongs to another sweep ({differences}); continue it with its own "
                             "arguments or choose another --out")
        return False
    if not write:
        return True
    try:
        os.makedirs(plan.out, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(wanted, f, indent=2)
            f.write("\n")
        os.replace(path + ".tmp", path)
    except OSError as err:
        raise SweepError(f"--out {plan.out} cannot be written ({err.strerror})") from None
    return True
