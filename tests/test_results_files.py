"""processor/results.py: the results files' layout is checked when written and when read, and a file that is missing
or not in the layout is named."""
from __future__ import annotations

import json

import pytest

from processor.results import (EvalHistory, ResultsError, metrics_of, read_history, read_results, evaluation_record,
                               training_results, write_results)

METRICS = {"mAP": 0.5, "R1": 0.25, "R5": 0.75, "R10": 1.0, "mINP": 0.125, "num_valid_query": 4,
           "num_skipped_query": 0, "num_query": 4, "num_gallery": 9, "derived": False}
PROVENANCE = {"seed": 1}


def test_written_records_read_back(tmp_path):
    training = training_results({"ALL": METRICS}, 3, "last epoch", {"ALL": dict(METRICS, mAP=0.75)}, PROVENANCE)
    path = write_results(training, str(tmp_path))
    assert read_results(path) == training and metrics_of(read_results(path)) == {"ALL": METRICS}
    tested = evaluation_record({"ALL": METRICS}, "model.pth", PROVENANCE)
    assert read_results(write_results(tested, str(tmp_path), "test.json"))["weights"] == "model.pth"


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(ResultsError, match=r"absent\.json: no such results file"):
        read_results(str(tmp_path / "absent.json"))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"ALL": METRICS}))  # the layout before provenance
    with pytest.raises(ResultsError, match=r"old\.json: not a results file of this layout: its keys \['ALL'\]"):
        read_results(str(old))
    broken = tmp_path / "broken.json"
    broken.write_text('{"split": ')
    with pytest.raises(ResultsError, match=r"broken\.json: cannot read it as JSON"):
        read_results(str(broken))
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps(evaluation_record({"ALL": {"mAP": 0.5}}, "w.pth", PROVENANCE)))
    with pytest.raises(ResultsError, match=r"lacking\.json: .*metrics\['ALL'\] lacks R1, R5, R10, mINP, num_query"):
        read_results(str(lacking))


def test_a_record_out_of_layout_is_not_written(tmp_path):
    with pytest.raises(ResultsError, match=r"results\.json would not be in the results layout: epoch '3'"):
        write_results(training_results({"ALL": METRICS}, "3", "last epoch", None, PROVENANCE), str(tmp_path))
    assert not (tmp_path / "results.json").exists()


def test_the_history_keeps_one_line_per_epoch_and_split(tmp_path):
    history = EvalHistory(str(tmp_path))
    history.add(1, "validation", {"ALL": METRICS})
    history.add(2, "validation", {"ALL": METRICS})
    history.add(2, "test", {"ALL": METRICS})
    history.add(1, "validation", {"ALL": dict(METRICS, mAP=0.0)})  # evaluated again after a resume
    entries = read_history(history.path)
    assert [(e["epoch"], e["split"]) for e in entries] == [(2, "validation"), (2, "test"), (1, "validation")]
    assert entries[-1]["metrics"]["ALL"]["mAP"] == 0.0
    history.keep_only("test", {3})
    assert [(e["epoch"], e["split"]) for e in read_history(history.path)] == [(2, "validation"), (1, "validation")]
    (tmp_path / "eval_history.jsonl").write_text('{"epoch": 1, "split": "train", "metrics": {}}\n')
    with pytest.raises(ResultsError, match=r"eval_history\.jsonl, line 1: not an \{epoch: int"):
        read_history(history.path)
