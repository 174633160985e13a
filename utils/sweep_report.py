"""A sweep's report: per setting, protocol and epoch selection, the mean and sample standard deviation over seeds of
mAP, R1 and mINP, as a table (console, report.md, report.csv), and a curve per setting of a metric against the epoch
(report.png).

Selections: "last epoch" (results.json), "validation" (results_best.json whose "selected_by" starts with
"validation") and "test set" (results_best.json selected on the test set: the epoch chosen by its own test score, an
optimistic figure, marked as such). Only finished runs (results.json) count; the runs still missing are listed.
"""
from __future__ import annotations

import csv
import io
import os
import shlex
import statistics
from dataclasses import dataclass, field

from processor.results import HISTORY_FILE, LAST_EPOCH, read_history, read_results

from .band_plot import Curve, draw_band_plot
from .sweep_plan import Plan, Run, SweepError

METRICS = ("mAP", "R1", "mINP")
SELECTIONS = {"last": "last epoch", "validation": "validation", "test": "test set †"}
TEST_SELECTED_NOTE = ("† the epoch with the best test score of each run (how SDF-Net and MOS select their published "
                      "checkpoints): optimistic, not a held-out estimate")
STD_NOTE = "± is the sample standard deviation over seeds (n - 1 in the denominator); – where n = 1"
NO_STD = "–"


@dataclass
class RunResults:
    run: Run
    last: dict
    best: dict | None           # results_best.json, None when the run wrote none
    history: list[dict]         # eval_history.jsonl


@dataclass
class Row:
    setting: str
    protocol: str
    selection: str              # a key of SELECTIONS
    seeds: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})  # fractions

    def stats(self, metric: str) -> tuple[float, float | None]:
        """(mean, sample std or None for one seed), in percent."""
        values = [100 * v for v in self.values[metric]]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def selection_of(results: dict, path: str) -> str:
    """"validation" or "test" for a results_best.json, from its "selected_by"."""
    for key in ("validation", "test"):
        if results["selected_by"].startswith(key):
            return key
    raise SweepError(f"{path}: \"selected_by\" {results['selected_by']!r} starts with neither \"validation\" nor "
                     "\"test\"")


def _training_results(path: str) -> dict:
    results = read_results(path)
    if "selected_by" not in results:
        raise SweepError(f"{path}: a test.py results file, not a training run's")
    return results


def read_run(run: Run) -> RunResults | None:
    """A finished run's results (None while it has no results.json)."""
    last_path = os.path.join(run.path, "results.json")
    if not os.path.isfile(last_path):
        return None
    last = _training_results(last_path)
    if last["selected_by"] != LAST_EPOCH:
        raise SweepError(f"{last_path}: \"selected_by\" is {last['selected_by']!r}, not {LAST_EPOCH!r}")
    best_path = os.path.join(run.path, "results_best.json")
    best = _training_results(best_path) if os.path.isfile(best_path) else None
    if best is not None:
        selection_of(best, best_path)
    return RunResults(run, last, best, read_history(os.path.join(run.path, HISTORY_FILE)))


@dataclass
class SweepResults:
    plan: Plan
    finished: list[RunResults]
    missing: list[Run]

    def rows(self) -> list[Row]:
        """Settings in grid order; within one, protocols in the runs' order, then last / validation / test set."""
        rows: dict[tuple[str, str, str], Row] = {}
        protocols_of: dict[str, tuple[list[str], str]] = {}
        for r in self.finished:
            name, path = r.run.setting.name, os.path.join(r.run.path, "results.json")
            protocols = list(r.last["metrics"])
            first = protocols_of.setdefault(name, (protocols, path))
            if set(protocols) != set(first[0]):
                raise SweepError(f"{path} has the protocols {protocols}, {first[1]} of the same setting {first[0]}")
            records = [("last", r.last)]
            if r.best is not None:
                records.append((selection_of(r.best, os.path.join(r.run.path, "results_best.json")), r.best))
            for selection, results in records:
                for protocol in protocols:
                    row = rows.setdefault((name, protocol, selection), Row(name, protocol, selection))
                    row.seeds.append(r.run.seed)
                    row.epochs.append(results["epoch"])
                    for metric in METRICS:
                        row.values[metric].append(results["metrics"][protocol][metric])
        order = list(SELECTIONS)
        names = [s.name for s in self.plan.settings()]
        return sorted(rows.values(), key=lambda row: (names.index(row.setting),
                                                      protocols_of[row.setting][0].index(row.protocol),
                                                      order.index(row.selection)))

    def without_best(self) -> list[Run]:
        return [r.run for r in self.finished if r.best is None]


def collect(plan: Plan) -> SweepResults:
    finished, missing = [], []
    for run in plan.runs():
        results = read_run(run)
        if results is None:
            missing.append(run)
        else:
            finished.append(results)
    return SweepResults(plan, finished, missing)


# ---------------------------------------------------------------------------------------------- tables
HEADER = ["setting", "protocol", "epoch by", "n", "epoch", *(f"{m} (%)" for m in METRICS)]


def _epochs(epochs: list[int]) -> str:
    return str(epochs[0]) if len(set(epochs)) == 1 else ",".join(map(str, epochs))


def _cell(row: Row, metric: str) -> str:
    mean, std = row.stats(metric)
    return f"{mean:.2f} ± {NO_STD if std is None else f'{std:.2f}'}"


def table_cells(rows: list[Row]) -> list[list[str]]:
    return [[r.setting, r.protocol, SELECTIONS[r.selection], str(len(r.seeds)), _epochs(r.epochs),
             *(_cell(r, m) for m in METRICS)] for r in rows]


def text_table(rows: list[Row]) -> str:
    cells = [HEADER] + table_cells(rows)
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _notes(results: SweepResults, rows: list[Row], plot_notes: list[str]) -> list[str]:
    notes = []
    if any(r.selection == "test" for r in rows):
        notes.append(TEST_SELECTED_NOTE)
    notes.append(STD_NOTE)
    total = len(results.plan.runs())
    if results.missing:
        notes.append(f"{len(results.missing)} of {total} runs have no results.json yet (unfinished or failed), "
                     "left out: " + "; ".join(r.path for r in results.missing))
    if results.without_best():
        notes.append("finished runs without results_best.json: " + "; ".join(r.path for r in results.without_best()))
    return notes + plot_notes


def markdown(results: SweepResults, rows: list[Row], notes: list[str], plot_name: str | None) -> str:
    plan = results.plan
    lines = [f"# Sweep {plan.out}", "",
             f"- recipe: `{plan.config_file}`",
             "- grid: " + ("; ".join(f"`{k}` in {', '.join(f'`{v}`' for v in vals)}" for k, vals in plan.grid)
                           if plan.grid else "none (one setting)"),
             f"- seeds: {', '.join(map(str, plan.seeds))}",
             f"- overrides: `{shlex.join(plan.overrides)}`" if plan.overrides else "- overrides: none",
             f"- finished runs: {len(results.finished)} of {len(plan.runs())}", "",
             "| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(HEADER))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in table_cells(rows)]
    lines += [""] + [f"{note}  " for note in notes]
    if plot_name:
        lines += ["", f"![curves]({plot_name})"]
    return "\n".join(lines) + "\n"


CSV_HEADER = ["setting", "protocol", "selection", "n", "seeds", "epochs",
              *(f"{m}_pct_{s}" for m in METRICS for s in ("mean", "std"))]


def csv_text(rows: list[Row]) -> str:
    """Percentages at full precision; std empty for one seed; seeds and epochs ';'-separated in the same order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in rows:
        stats = [r.stats(m) for m in METRICS]
        writer.writerow([r.setting, r.protocol, SELECTIONS[r.selection], len(r.seeds), ";".join(map(str, r.seeds)),
                         ";".join(map(str, r.epochs)),
                         *(x for mean, std in stats for x in (repr(mean), "" if std is None else repr(std)))])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- curves
def curves(results: SweepResults, split: str, protocol: str, metric: str) -> tuple[list[Curve], list[str]]:
    """Per setting: at every epoch that all its finished seeds evaluated on `split`, the mean and min-max of
    `metric` (percent). Epochs only some seeds evaluated are left out, and a note says which."""
    by_setting: dict[str, list[RunResults]] = {}
    for r in results.finished:
        by_setting.setdefault(r.run.setting.name, []).append(r)
    out, notes = [], []
    for setting in [s.name for s in results.plan.settings()]:
        runs = by_setting.get(setting)
        if not runs:
            continue
        per_seed = []
        for r in runs:
            values = {e["epoch"]: e["metrics"][protocol][metric] for e in r.history
                      if e["split"] == split and protocol in e["metrics"]}
            per_seed.append(values)
        common = sorted(set.intersection(*(set(v) for v in per_seed)))
        partial = sorted(set.union(*(set(v) for v in per_seed)) - set(common))
        if partial:
            notes.append(f"{setting}: epoch(s) {', '.join(map(str, partial))} evaluated on the {split} set by only "
                         "some seeds are not in the curve")
        if not common:
            notes.append(f"{setting}: no epoch with a {split} {protocol} evaluation in every seed: no curve")
            continue
        points = [[100 * v[e] for v in per_seed] for e in common]
        out.append(Curve(setting, common, [statistics.mean(p) for p in points], [min(p) for p in points],
                         [max(p) for p in points]))
    return out, notes


@dataclass
class Report:
    text: str
    paths: list[str]


def write_report(out: str, plan: Plan, split: str = "test", protocol: str = "ALL", metric: str = "mAP") -> Report:
    """report.md, report.csv and report.png in `out`; the text table and notes for the console."""
    results = collect(plan)
    if not results.finished:
        raise SweepError(f"{out}: none of the {len(plan.runs())} runs has finished (no results.json) yet; "
                         "nothing to report")
    rows = results.rows()
    found, plot_notes = curves(results, split, protocol, metric)
    paths = []
    plot_name, plot_path = None, os.path.join(out, "report.png")
    if found:
        plot_name = "report.png"
        paths.append(draw_band_plot(found, plot_path,
                                    f"{split} {protocol} {metric} by epoch: mean over seeds, band from min to max",
                                    "epoch", f"{metric} (%)"))
    elif os.path.exists(plot_path):  # an earlier report's curves would pass for these
        os.remove(plot_path)
        plot_notes.append(f"no curve to draw: the earlier {plot_path} is removed")
    notes = _notes(results, rows, plot_notes)
    for name, text in (("report.md", markdown(results, rows, notes, plot_name)), ("report.csv", csv_text(rows))):
        path = os.path.join(out, name)
        with open(path, "w", newline="") as f:
            f.write(text)
        paths.append(path)
    return Report("\n".join([text_table(rows), "", *notes]), sorted(paths))
