"""Model selection: the split (validation or test) and SOLVER.SELECT_METRIC ("<protocol>/<metric>") that rank epochs."""
from __future__ import annotations

from dataclasses import dataclass

SELECTABLE_METRICS = ("mAP", "R1", "R5", "R10", "mINP")


def select_metric_problems(text: str, protocols) -> list[str]:
    """What is wrong with a SOLVER.SELECT_METRIC value for a run evaluating `protocols` (DATASETS.PROTOCOLS)."""
    protocol, slash, metric = text.partition("/")
    if not slash or not protocol or not metric or "/" in metric:
        return [f"SOLVER.SELECT_METRIC {text!r} must read <protocol>/<metric>, e.g. ALL/mAP"]
    problems = []
    if protocol not in protocols:
        problems.append(f"SOLVER.SELECT_METRIC {text!r} names the protocol {protocol}, which DATASETS.PROTOCOLS "
                        f"{list(protocols)} does not evaluate")
    if metric not in SELECTABLE_METRICS:
        problems.append(f"SOLVER.SELECT_METRIC {text!r} names the metric {metric}; choose one of "
                        f"{', '.join(SELECTABLE_METRICS)}")
    return problems


@dataclass(frozen=True)
class Selection:
    split: str      # "validation" or "test": the evaluation whose metric selects
    protocol: str
    metric: str

    @classmethod
    def of(cls, cfg, split: str) -> "Selection":
        """SOLVER.SELECT_METRIC (checked at start-up by select_metric_problems) ranking epochs on `split`."""
        protocol, _, metric = cfg.SOLVER.SELECT_METRIC.partition("/")
        return cls(split, protocol, metric)

    @property
    def name(self) -> str:
        """The results files' "selected_by", e.g. "validation ALL/mAP"."""
        return f"{self.split} {self.protocol}/{self.metric}"

    def value(self, results: dict) -> float:
        return results[self.protocol][self.metric]
