"""DATASETS.VAL_IDS: held-out training identities, drawn from the seed, evaluated like the test set and selecting
model_best.pth; the test set is then evaluated for the selected and the last epoch only. VAL_IDS 0 keeps the
official selection on the test set."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import REPO, TINY_MODEL
from test_training import build

import test as test_entry
import train as train_entry
from configs.checks import ConfigCheckError
from datasets.hoss import HOSS
from datasets.records import OPTICAL, SAR, ChipRecord, DatasetError
from datasets.synthetic import SyntheticSpec, ensure_synthetic
from datasets.validation import eligible_ids, hold_out
from processor.engine import unwrap
from processor.hooks import EvalHook, Hook
from processor.results import metrics_of, read_history, read_results

# 12 training identities, each with 2 optical and 2 SAR chips (so every validation protocol has queries)
SPEC = SyntheticSpec(seed=3, train_ids=12, test_ids=6, images_per_id=4, distractors=2, pair_folders=1,
                     pairs_per_folder=1)
RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
       "SOLVER.AMP", "off", "SOLVER.LOG_PERIOD", "5", "MODEL.PRETRAIN_PATH", "", "INPUT.SIZE_TRAIN", "[128,64]",
       "INPUT.SIZE_TEST", "[128,64]", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.BASE_LR", "0.002"]
VALIDATED = ["--config_file", "configs/hoss/transoss.yml", *RUN, "SOLVER.MAX_EPOCHS", "3", "SOLVER.EVAL_PERIOD", "1",
             "DATASETS.VAL_IDS", "4", "SEED", "7"]
METRICS = ("mAP", "R1", "R5", "R10", "mINP")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic") / "root")
    ensure_synthetic(root, SPEC)
    return root


@pytest.fixture(scope="module")
def validated_run(synthetic_root, tmp_path_factory):
    """Three epochs with 4 held-out identities, evaluated every epoch: (OUTPUT_DIR, trainer)."""
    out = tmp_path_factory.mktemp("validated") / "run"
    trainer = train_entry.main([*VALIDATED, "DATASETS.ROOT_DIR", synthetic_root, "OUTPUT_DIR", str(out)])
    return out, trainer


def checkpoint_weights(out, epoch: int) -> dict:
    return torch.load(out / "checkpoints" / f"epoch_{epoch:04d}.pth", weights_only=False)["model"]


def assert_same_weights(file, expected: dict) -> None:
    saved = torch.load(file, weights_only=True)
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key


def test_held_out_identities_are_drawn_from_the_seed(synthetic_root):
    hoss = HOSS(synthetic_root)
    split = hold_out(hoss.train, 4, 7, ["ALL", "O2S", "S2O"])
    again = hold_out(hoss.train, 4, 7, ["ALL", "O2S", "S2O"])
    other = hold_out(hoss.train, 4, 8, ["ALL", "O2S", "S2O"])
    assert split.ids == again.ids and len(split.ids) == 4 and other.ids != split.ids
    assert [r.path for r in split.protocols[0].query] == [r.path for r in again.protocols[0].query]
    assert set(split.ids) <= set(eligible_ids(hoss.train))
    test_ids = {r.pid for r in hoss.split("query") + hoss.split("bounding_box_test")}
    assert not set(split.ids) & test_ids
    assert not {r.pid for r in split.train} & set(split.ids)
    assert len(split.train) + 16 == len(hoss.train)  # 4 identities x 4 chips left training

    all_, o2s, s2o = split.protocols
    # one query per identity and modality; every other chip of those identities is the gallery
    assert sorted((r.pid, r.modality) for r in all_.query) == sorted((p, m) for p in split.ids for m in (OPTICAL, SAR))
    assert sorted(r.path for r in all_.query + all_.gallery) == sorted(r.path for r in hoss.train
                                                                       if r.pid in split.ids)
    assert (o2s.name, o2s.derived, s2o.name) == ("O2S", True, "S2O")
    assert all(r.modality == OPTICAL for r in o2s.query) and all(r.modality == SAR for r in o2s.gallery)
    assert all(r.modality == SAR for r in s2o.query) and all(r.modality == OPTICAL for r in s2o.gallery)
    assert len(o2s.query) == len(s2o.query) == 4 and len(o2s.gallery) == len(s2o.gallery) == 4


def fake_records(modalities_per_id: dict[int, tuple[int, ...]]) -> list[ChipRecord]:
    return [ChipRecord(f"/nowhere/{pid:04d}_s01c{i}_{'RGB' if m == OPTICAL else 'SAR'}.tif", pid, m, 1, i)
            for pid, modalities in modalities_per_id.items() for i, m in enumerate(modalities, 1)]


def test_too_many_held_out_identities_are_refused_naming_the_key_and_the_count():
    # identity 3 has optical chips only: 2 of the 3 identities can be held out
    records = fake_records({1: (OPTICAL, SAR), 2: (OPTICAL, SAR, SAR), 3: (OPTICAL, OPTICAL)})
    with pytest.raises(DatasetError, match=r"DATASETS\.VAL_IDS 3 is more than the 2 training identities with both "
                                           r"optical and SAR images"):
        hold_out(records, 3, 0, ["ALL"])
    with pytest.raises(DatasetError, match=r"DATASETS\.VAL_IDS 2 leaves 1 of the 3 training identities to train on; "
                                           r"at least 2 are needed: hold out at most 1"):
        hold_out(records, 2, 0, ["ALL"])
    assert len(hold_out(records, 1, 0, ["ALL"]).ids) == 1


def test_start_up_refuses_a_split_the_data_cannot_hold(hoss_root, tmp_path):
    """The real chips: 21 training identities, 15 of them with both modalities."""
    with pytest.raises(DatasetError, match=r"DATASETS\.VAL_IDS 16 is more than the 15 training identities"):
        train_entry.main(["--config_file", "configs/hoss/transoss.yml", *RUN, "DATASETS.ROOT_DIR", hoss_root,
                          "DATASETS.VAL_IDS", "16", "OUTPUT_DIR", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("override,message", [
    (["SOLVER.SELECT_METRIC", "mAP"], r"SOLVER\.SELECT_METRIC 'mAP' must read <protocol>/<metric>, e\.g\. ALL/mAP"),
    (["SOLVER.SELECT_METRIC", "O2S/mAP", "DATASETS.PROTOCOLS", "['ALL']"],
     r"names the protocol O2S, which DATASETS\.PROTOCOLS \['ALL'\] does not evaluate"),
    (["SOLVER.SELECT_METRIC", "ALL/R20"], r"names the metric R20; choose one of mAP, R1, R5, R10, mINP"),
    (["DATASETS.VAL_IDS", "-1"], r"DATASETS\.VAL_IDS must be 0 \(no validation split\) or a number of identities"),
    (["DATASETS.VAL_IDS", "2", "TEST.FUSION.CACHE_DIR", "cache"], r"DATASETS\.VAL_IDS 2 with TEST\.FUSION\.CACHE_DIR"),
], ids=["no-slash", "protocol", "metric", "negative", "fusion"])
def test_selection_settings_are_checked_before_the_data_scan(tmp_path, override, message):
    with pytest.raises(ConfigCheckError, match=message):
        train_entry.main(["--config_file", "configs/hoss/transoss.yml", *RUN, "DATASETS.ROOT_DIR",
                          str(tmp_path / "no_such_folder"), *override, "OUTPUT_DIR", str(tmp_path / "out")])


def test_held_out_identities_are_out_of_training_and_of_the_classifier(synthetic_root, tmp_path):
    common = ["DATASETS.ROOT_DIR", synthetic_root, "SOLVER.MAX_EPOCHS", "1"]
    plain = build(train_entry.build_trainer, ["--config_file", "configs/hoss/transoss.yml", *RUN, *common,
                                              "OUTPUT_DIR", str(tmp_path / "plain")])
    trainer = build(train_entry.build_trainer, [*VALIDATED, *common, "OUTPUT_DIR", str(tmp_path / "val")])
    held = hold_out(HOSS(synthetic_root).train, 4, 7, ["ALL"]).ids
    assert unwrap(plain.model).classifier.out_features == 12
    assert unwrap(trainer.model).classifier.out_features == 12 - 4
    assert trainer.loader.dataset.num_classes == 8
    trained = {r.pid for r in trainer.loader.dataset.records}
    assert len(trained) == 8 and not trained & set(held)
    evaluation = next(h for h in trainer.hooks if isinstance(h, EvalHook))
    assert {r.pid for r in evaluation.validation.records} == set(held)
    assert evaluation.selection.name == "validation ALL/mAP"


def test_validation_selects_the_epoch_and_the_test_set_is_evaluated_for_it_and_the_last(validated_run):
    out, trainer = validated_run
    history = read_history(str(out / "eval_history.jsonl"))
    validation = {e["epoch"]: e["metrics"] for e in history if e["split"] == "validation"}
    test = {e["epoch"]: e["metrics"] for e in history if e["split"] == "test"}
    assert sorted(validation) == [1, 2, 3] and len(history) == len(validation) + len(test)
    best_value = max(m["ALL"]["mAP"] for m in validation.values())
    selected = min(epoch for epoch, m in validation.items() if m["ALL"]["mAP"] == best_value)  # the earliest of ties

    last, best = read_results(str(out / "results.json")), read_results(str(out / "results_best.json"))
    assert (last["split"], last["epoch"], last["selected_by"]) == ("test", 3, "last epoch")
    assert (best["split"], best["epoch"], best["selected_by"]) == ("test", selected, "validation ALL/mAP")
    assert sorted(test) == sorted({selected, 3})
    assert metrics_of(last) == test[3] and metrics_of(best) == test[selected]
    assert last["validation"] == validation[3] and best["validation"] == validation[selected]
    for protocol, metrics in validation[1].items():
        assert (metrics["num_query"], metrics["num_gallery"]) == ((8, 8) if protocol == "ALL" else (4, 4))
        assert 0.0 < metrics["mAP"] <= 1.0
    assert_same_weights(out / "model_best.pth", checkpoint_weights(out, selected))
    assert_same_weights(out / "model_final.pth", checkpoint_weights(out, 3))

    # the start-up table: label -> ids, images, optical, SAR, distractors
    table = {" ".join(w for w in line.split() if not w.isdigit()): [int(w) for w in line.split() if w.isdigit()]
             for line in (out / "train.log").read_text().splitlines() if line.startswith(("train ", "val "))}
    assert table == {"train": [8, 32, 16, 16, 0], "val ALL query": [4, 8, 4, 4, 0], "val ALL gallery": [4, 8, 4, 4, 0],
                     "val O2S query": [4, 4, 4, 0, 0], "val O2S gallery": [4, 4, 0, 4, 0],
                     "val S2O query": [4, 4, 0, 4, 0], "val S2O gallery": [4, 4, 4, 0, 0]}


def test_validation_metrics_go_to_tensorboard_beside_the_test_ones(validated_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, _ = validated_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"eval_val/{p}/{m}" for p in ("ALL", "O2S", "S2O") for m in METRICS} <= tags
    assert [e.step for e in events.Scalars("eval_val/ALL/mAP")] == [1, 2, 3]
    selected = read_results(str(out / "results_best.json"))["epoch"]
    assert sorted({e.step for e in events.Scalars("eval/ALL/mAP")}) == sorted({selected, 3})


def script_validation(trainer, values) -> None:
    """The validation ALL mAP of each evaluation becomes the next of `values` (the rest stays measured)."""
    evaluation = next(h for h in trainer.hooks if isinstance(h, EvalHook))
    measure, script = evaluation.validation.evaluate, iter(values)

    def evaluate(model, device):
        results, feats = measure(model, device)
        results["ALL"]["mAP"] = next(script)
        return results, feats
    evaluation.validation.evaluate = evaluate


def test_the_selected_weights_are_tested_and_the_last_ones_kept(synthetic_root, tmp_path):
    out = tmp_path / "run"
    trainer = build(train_entry.build_trainer, [*VALIDATED, "DATASETS.ROOT_DIR", synthetic_root,
                                                "OUTPUT_DIR", str(out)])
    script_validation(trainer, [0.2, 0.6, 0.4])
    evaluation = next(h for h in trainer.hooks if isinstance(h, EvalHook))
    tested_weights, measure = [], evaluation.evaluator.evaluate

    def test_set(model, device):  # the weights each test-set evaluation sees
        tested_weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return measure(model, device)
    evaluation.evaluator.evaluate = test_set
    trainer.train()

    best, last = read_results(str(out / "results_best.json")), read_results(str(out / "results.json"))
    assert (best["epoch"], best["validation"]["ALL"]["mAP"], last["validation"]["ALL"]["mAP"]) == (2, 0.6, 0.4)
    assert_same_weights(out / "model_best.pth", checkpoint_weights(out, 2))
    # the test set saw the last weights, then model_best.pth's; after that the trainer holds the last ones again
    assert len(tested_weights) == 2
    for seen, epoch in zip(tested_weights, (3, 2)):
        expected = checkpoint_weights(out, epoch)
        assert all(torch.equal(seen[k], expected[k]) for k in expected), epoch
    assert_same_weights(out / "model_final.pth", checkpoint_weights(out, 3))
    history = read_history(str(out / "eval_history.jsonl"))
    assert [(e["epoch"], e["split"]) for e in history] == [(1, "validation"), (2, "validation"), (3, "validation"),
                                                           (3, "test"), (2, "test")]
    # results_best.json holds what test.py measures for model_best.pth
    tested = test_entry.main(["--config_file", "configs/hoss/transoss.yml", *RUN, "DATASETS.ROOT_DIR", synthetic_root,
                              "TEST.WEIGHT", str(out / "model_best.pth"), "OUTPUT_DIR", str(tmp_path / "test")])
    for protocol, metrics in metrics_of(best).items():
        for name in METRICS:
            assert metrics[name] == pytest.approx(tested[protocol][name], abs=1e-9), (protocol, name)


class StopAfterEvaluation(Hook):
    """A crash right after `epoch` was evaluated: its checkpoint (written before) says it was not."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_epoch_saved(self, trainer):
        if trainer.epoch - 1 == self.epoch:
            raise KeyboardInterrupt


def test_resume_with_validation_gives_the_uninterrupted_results_once_per_epoch(validated_run, synthetic_root,
                                                                               tmp_path):
    full, full_trainer = validated_run
    out = tmp_path / "cut"
    args = [*VALIDATED, "DATASETS.ROOT_DIR", synthetic_root, "OUTPUT_DIR", str(out)]
    trainer = build(train_entry.build_trainer, args)
    trainer.hooks.append(StopAfterEvaluation(2))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert [(e["epoch"], e["split"]) for e in read_history(str(out / "eval_history.jsonl"))][-1] == (2, "validation")
    resumed = train_entry.main(args + ["--resume"])
    log = (out / "train.log").read_text()
    assert "epoch 2 was saved but not evaluated: evaluating it first" in log
    # epoch 2 evaluated twice, recorded once; every line as in the uninterrupted run
    history, expected = (read_history(str(folder / "eval_history.jsonl")) for folder in (out, full))
    assert sorted((e["epoch"], e["split"]) for e in history) == sorted((e["epoch"], e["split"]) for e in expected)
    assert sorted(history, key=lambda e: (e["epoch"], e["split"])) == sorted(expected,
                                                                             key=lambda e: (e["epoch"], e["split"]))
    for name in ("results.json", "results_best.json"):
        ours, theirs = read_results(str(out / name)), read_results(str(full / name))
        assert {k: v for k, v in ours.items() if k != "provenance"} == \
            {k: v for k, v in theirs.items() if k != "provenance"}, name
    for key, value in full_trainer.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_without_validation_the_test_set_selects_as_before(hoss_root, tmp_path):
    """VAL_IDS 0: every due epoch is a test line, results_best.json is the best test epoch, "validation" is null."""
    out = tmp_path / "run"
    train_entry.main(["--config_file", "configs/hoss/transoss.yml", *RUN, "DATASETS.ROOT_DIR", hoss_root,
                      "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1", "SOLVER.SELECT_METRIC", "ALL/R5",
                      "OUTPUT_DIR", str(out)])
    history = read_history(str(out / "eval_history.jsonl"))
    assert [(e["epoch"], e["split"]) for e in history] == [(1, "test"), (2, "test")]
    last, best = read_results(str(out / "results.json")), read_results(str(out / "results_best.json"))
    r5 = [e["metrics"]["ALL"]["R5"] for e in history]
    assert best["epoch"] == (2 if r5[1] > r5[0] else 1) and best["selected_by"] == "test ALL/R5"
    assert metrics_of(best) == history[best["epoch"] - 1]["metrics"] and metrics_of(last) == history[1]["metrics"]
    assert last["validation"] is None and best["validation"] is None


# train.py under torchrun with the validation ALL mAP scripted (epoch 1 best); every rank writes a checksum of the
# weights each test-set evaluation saw
WATCHED_TRAIN = f"""
import json, os, sys
sys.path.insert(0, {REPO!r})
import train as train_entry
from processor.hooks import EvalHook
from utils.cli import run_cli
from utils.distributed import rank

seen = []


def checksum(state):
    return float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))


def build_and_watch(cfg, device, logger, build=train_entry.build_trainer):
    trainer = build(cfg, device, logger)
    evaluation = next(h for h in trainer.hooks if isinstance(h, EvalHook))
    validate, test, script = evaluation.validation.evaluate, evaluation.evaluator.evaluate, iter([0.6, 0.2])

    def scripted(model, device):
        results, feats = validate(model, device)
        results["ALL"]["mAP"] = next(script)
        return results, feats

    def watched(model, device):
        seen.append(checksum(model.state_dict()))
        return test(model, device)
    evaluation.validation.evaluate, evaluation.evaluator.evaluate = scripted, watched
    return trainer


def main():
    train_entry.build_trainer = build_and_watch
    trainer = train_entry.main(sys.argv[1:])
    with open(os.path.join(trainer.cfg.OUTPUT_DIR, f"seen_rank{{rank()}}.json"), "w") as f:
        json.dump(seen, f)


run_cli(main)
"""


def test_two_ranks_test_the_selected_weights_together(hoss_root, tmp_path):
    """Rank 0 reads model_best.pth back and sends it: both ranks embed their test rows with the selected weights,
    then both go back to the last ones."""
    import subprocess
    import sys
    script, out = tmp_path / "watched_train.py", tmp_path / "np2"
    script.write_text(WATCHED_TRAIN)
    args = ["--config_file", "configs/hoss/transoss.yml", *RUN, "DATASETS.ROOT_DIR", hoss_root, "DATASETS.VAL_IDS", "4",
            "SOLVER.MAX_EPOCHS", "2", "SOLVER.EVAL_PERIOD", "1", "MODEL.DROP_PATH", "0.0", "DATASETS.PROTOCOLS",
            "['ALL']", "OUTPUT_DIR", str(out)]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = [json.loads((out / f"seen_rank{r}.json").read_text()) for r in (0, 1)]

    def checksum(state):
        return float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))
    assert seen[0] == seen[1] == [checksum(checkpoint_weights(out, 2)), checksum(checkpoint_weights(out, 1))]
    best = read_results(str(out / "results_best.json"))
    assert (best["epoch"], best["selected_by"], best["provenance"]["world_size"]) == (1, "validation ALL/mAP", 2)
    assert_same_weights(out / "model_best.pth", checkpoint_weights(out, 1))
    assert_same_weights(out / "model_final.pth", checkpoint_weights(out, 2))


def test_a_resume_keeps_the_selection_it_started_with():
    from configs import load_config
    from utils.errors import ShipReIDError
    results = {"ALL": {name: 0.5 for name in METRICS}}
    # a checkpoint from before SOLVER.SELECT_METRIC kept the test set's first protocol's mAP
    legacy = {"best_mAP": 0.5, "best_epoch": 2, "best_results": results, "evaluated_epoch": 2}
    EvalHook(load_config(None, ["SOLVER.SELECT_METRIC", "ALL/mAP"]), None)._check_selection(legacy)
    assert legacy == {"selected_by": "test ALL/mAP", "best_value": 0.5, "best_epoch": 2, "best_test": results,
                      "evaluated_epoch": 2}
    validated = EvalHook(load_config(None, ["SOLVER.SELECT_METRIC", "ALL/R1"]), None, validation=object())
    with pytest.raises(ShipReIDError, match=r"selected its best epoch by test ALL/mAP, this config by validation "
                                            r"ALL/R1: resume with the run's DATASETS\.VAL_IDS and "
                                            r"SOLVER\.SELECT_METRIC"):
        validated._check_selection(legacy)
