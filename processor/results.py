"""The results files a run leaves in OUTPUT_DIR, written and read here only (the layout: docs/reporting.md).

- results.json of training: {"split": "test", "epoch", "selected_by": "last epoch", "metrics", "validation",
  "provenance"}; results_best.json: the same for the selected epoch ("selected_by": "validation ALL/mAP" or
  "test ALL/mAP"). "metrics" is {protocol: metrics} on the test set, "validation" the same on the validation split
  at that epoch (null without one).
- results.json of test.py: {"split": "test", "weights", "metrics", "provenance"}.
- eval_history.jsonl: one {"epoch", "split", "metrics"} line per evaluation, one per (epoch, split).
"""
from __future__ import annotations

import json
import os

from utils.errors import ShipReIDError

SPLITS = ("test", "validation")
PROTOCOL_KEYS = ("mAP", "R1", "R5", "R10", "mINP", "num_query", "num_gallery", "derived")
LAST_EPOCH = "last epoch"
HISTORY_FILE = "eval_history.jsonl"
TRAINING_KEYS = {"split", "epoch", "selected_by", "metrics", "validation", "provenance"}
TEST_PY_KEYS = {"split", "weights", "metrics", "provenance"}


class ResultsError(ShipReIDError):
    """A results file that is missing or not in the layout of processor/results.py."""


def training_results(metrics: dict, epoch: int, selected_by: str, validation: dict | None, provenance: dict) -> dict:
    return {"split": "test", "epoch": epoch, "selected_by": selected_by, "metrics": metrics, "validation": validation,
            "provenance": provenance}


def evaluation_record(metrics: dict, weights: str, provenance: dict) -> dict:
    return {"split": "test", "weights": weights, "metrics": metrics, "provenance": provenance}


def _metrics_problems(metrics, where: str) -> list[str]:
    if not isinstance(metrics, dict) or not metrics:
        return [f"{where} is not a non-empty {{protocol: metrics}} mapping"]
    problems = []
    for protocol, values in metrics.items():
        missing = [k for k in PROTOCOL_KEYS if not isinstance(values, dict) or k not in values]
        if missing:
            problems.append(f"{where}[{protocol!r}] lacks {', '.join(missing)}")
    return problems


def layout_problems(results) -> list[str]:
    """What keeps `results` from being a training or test.py results record ([] when it is one)."""
    if not isinstance(results, dict):
        return [f"a JSON object was expected, got {type(results).__name__}"]
    keys = set(results)
    if keys != TRAINING_KEYS and keys != TEST_PY_KEYS:
        return [f"its keys {sorted(keys)} are neither a training run's {sorted(TRAINING_KEYS)} nor test.py's "
                f"{sorted(TEST_PY_KEYS)} (a file from before this layout: rerun, or read it as plain JSON)"]
    problems = [] if results["split"] == "test" else [f"split {results['split']!r} is not 'test'"]
    problems += _metrics_problems(results["metrics"], "metrics")
    if not isinstance(results["provenance"], dict):
        problems.append("provenance is not a mapping")
    if keys == TRAINING_KEYS:
        if not isinstance(results["epoch"], int):
            problems.append(f"epoch {results['epoch']!r} is not an integer")
        if results["validation"] is not None:
            problems += _metrics_problems(results["validation"], "validation")
    return problems


def write_results(results: dict, output_dir: str, name: str = "results.json") -> str:
    """OUTPUT_DIR/name, written to a temporary name and renamed (a reader never sees half a file)."""
    problems = layout_problems(results)
    if problems:  # a bug of the writer, caught before a reader meets it
        raise ResultsError(f"{name} would not be in the results layout: {'; '.join(problems)}")
    path = os.path.join(output_dir, name)
    _write_text(path, json.dumps(results, indent=2))
    return path


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_results(path: str) -> dict:
    """A results.json / results_best.json of training or test.py; raises ResultsError naming the file when it is
    missing, not JSON, or not in this layout."""
    try:
        with open(path) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, ValueError) as err:
        raise ResultsError(f"{path}: cannot read it as JSON ({err})") from None
    problems = layout_problems(results)
    if problems:
        raise ResultsError(f"{path}: not a results file of this layout: {'; '.join(problems)}")
    return results


def metrics_of(results: dict) -> dict:
    """The test-set {protocol: metrics} of a record read by read_results."""
    return results["metrics"]


class EvalHistory:
    """OUTPUT_DIR/eval_history.jsonl. Each evaluation replaces any earlier line of its (epoch, split), so a resumed
    run that evaluates an epoch again leaves one line for it, the latest, last."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, HISTORY_FILE)

    def add(self, epoch: int, split: str, metrics: dict) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        kept = [e for e in self.entries() if (e["epoch"], e["split"]) != (epoch, split)]
        self._write(kept + [{"epoch": epoch, "split": split, "metrics": metrics}])

    def keep_only(self, split: str, epochs) -> None:
        """Drop the `split` lines of every epoch not in `epochs` (test lines of epochs no longer selected)."""
        self._write([e for e in self.entries() if e["split"] != split or e["epoch"] in set(epochs)])

    def entries(self) -> list[dict]:
        return read_history(self.path) if os.path.isfile(self.path) else []

    def _write(self, entries: list[dict]) -> None:
        _write_text(self.path, "".join(json.dumps(e) + "\n" for e in entries))


def read_history(path: str) -> list[dict]:
    """The lines of an eval_history.jsonl; raises ResultsError naming the file and line when one is not an
    {"epoch", "split", "metrics"} record."""
    if not os.path.isfile(path):
        raise ResultsError(f"{path}: no such evaluation history")
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
            except ValueError as err:
                raise ResultsError(f"{path}, line {number}: not JSON ({err})") from None
            problems = ([] if isinstance(entry, dict) and set(entry) == {"epoch", "split", "metrics"}
                        and isinstance(entry["epoch"], int) and entry["split"] in SPLITS
                        else ["not an {epoch: int, split: test|validation, metrics} record"])
            if not problems:
                problems = _metrics_problems(entry["metrics"], "metrics")
            if problems:
                raise ResultsError(f"{path}, line {number}: {'; '.join(problems)}")
            entries.append(entry)
    return entries
