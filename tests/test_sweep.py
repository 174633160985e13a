"""tools/sweep.py: a recipe over override sets x seeds, killed and continued, failures reported, the submitit job path,
and a report whose numbers are the runs' own, aggregated by hand here."""
from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest
import submitit
from PIL import Image

from conftest import REPO, TINY_MODEL

from processor.results import EvalHistory, training_results, write_results
from tools.sweep import main as sweep_main
from utils.errors import ShipReIDError
from utils.band_plot import BAND_ALPHA, PALETTE, frame_for
from utils.sweep_launch import TRAIN, TrainJob, train_command
from utils.sweep_plan import Plan, SweepError, claim_folder, make_plan, parse_grid
from utils.sweep_report import collect, curves, write_report

CONFIG = os.path.join(REPO, "configs", "hoss", "transoss.yml")
SWEEP = os.path.join(REPO, "tools", "sweep.py")
# tiny CPU runs of 2 epochs, each evaluated (so a run killed after epoch 1 has a checkpoint and no results.json)
TINY_RUN = [*TINY_MODEL, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "8",
            "SOLVER.AMP", "off", "MODEL.PRETRAIN_PATH", "", "SOLVER.LOG_PERIOD", "5", "SOLVER.MAX_EPOCHS", "2",
            "SOLVER.EVAL_PERIOD", "1", "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]"]
SELECTION_LABELS = {"last": "last epoch", "validation": "validation", "test": "test set †"}


# ---------------------------------------------------------------------------------------------- by hand
def by_hand(plan: Plan) -> dict[tuple[str, str, str], dict]:
    """(setting, protocol, selection label) -> n, seeds, epochs and per metric (mean, sample std) in percent,
    from the runs' results files read as plain JSON."""
    values: dict[tuple[str, str, str], dict] = {}
    for setting in plan.settings():
        for seed in plan.seeds:
            folder = os.path.join(plan.out, setting.folder, f"seed_{seed}")
            if not os.path.isfile(os.path.join(folder, "results.json")):
                continue
            records = [("last", "results.json")]
            if os.path.isfile(os.path.join(folder, "results_best.json")):
                records.append((None, "results_best.json"))
            for selection, name in records:
                with open(os.path.join(folder, name)) as f:
                    results = json.load(f)
                if selection is None:
                    selection = "validation" if results["selected_by"].startswith("validation") else "test"
                for protocol, metrics in results["metrics"].items():
                    entry = values.setdefault((setting.name, protocol, SELECTION_LABELS[selection]),
                                              {"seeds": [], "epochs": [], "mAP": [], "R1": [], "mINP": []})
                    entry["seeds"].append(seed)
                    entry["epochs"].append(results["epoch"])
                    for metric in ("mAP", "R1", "mINP"):
                        entry[metric].append(100 * metrics[metric])
    expected = {}
    for key, entry in values.items():
        expected[key] = {"n": len(entry["seeds"]), "seeds": entry["seeds"], "epochs": entry["epochs"]}
        for metric in ("mAP", "R1", "mINP"):
            column = entry[metric]
            expected[key][metric] = (statistics.mean(column), statistics.stdev(column) if len(column) > 1 else None)
    return expected


def read_csv(out) -> dict[tuple[str, str, str], dict]:
    with open(os.path.join(out, "report.csv"), newline="") as f:
        return {(row["setting"], row["protocol"], row["selection"]): row for row in csv.DictReader(f)}


def assert_report_is(plan: Plan, expected: dict) -> None:
    """report.csv holds exactly the expected rows and numbers; report.md shows them rounded, "–" for one seed."""
    rows = read_csv(plan.out)
    assert set(rows) == set(expected)
    with open(os.path.join(plan.out, "report.md")) as f:
        markdown = f.read()
    for key, want in expected.items():
        row = rows[key]
        assert int(row["n"]) == want["n"]
        assert row["seeds"] == ";".join(map(str, want["seeds"]))
        assert row["epochs"] == ";".join(map(str, want["epochs"]))
        cells = []
        for metric in ("mAP", "R1", "mINP"):
            mean, std = want[metric]
            assert float(row[f"{metric}_pct_mean"]) == pytest.approx(mean, rel=1e-12, abs=1e-12), (key, metric)
            if std is None:
                assert row[f"{metric}_pct_std"] == ""
                cells.append(f"{mean:.2f} ± –")
            else:
                assert float(row[f"{metric}_pct_std"]) == pytest.approx(std, rel=1e-12, abs=1e-12), (key, metric)
                cells.append(f"{mean:.2f} ± {std:.2f}")
        epochs = want["epochs"]
        epoch_cell = str(epochs[0]) if len(set(epochs)) == 1 else ",".join(map(str, epochs))
        assert f"| {key[0]} | {key[1]} | {key[2]} | {want['n']} | {epoch_cell} | {' | '.join(cells)} |" in markdown


# ---------------------------------------------------------------------------------------------- hand-made runs
def metrics(mAP: float, R1: float, mINP: float) -> dict:
    return {"mAP": mAP, "R1": R1, "R5": R1, "R10": R1, "mINP": mINP, "num_query": 4, "num_gallery": 9,
            "derived": False}


def write_run(folder, last_epoch: int, last: dict, best_epoch: int, best: dict, selected_by: str,
              history: dict[int, dict]) -> None:
    """A run folder as train.py leaves it, through the writers train.py uses."""
    os.makedirs(folder)
    write_results(training_results(last, last_epoch, "last epoch", None, {}), str(folder))
    write_results(training_results(best, best_epoch, selected_by, None, {}), str(folder), "results_best.json")
    for epoch, per_protocol in history.items():
        EvalHistory(str(folder)).add(epoch, "test", per_protocol)


def test_report_aggregates_seeds_with_the_sample_std_and_names_what_is_missing(tmp_path):
    plan = Plan("configs/hoss/transoss.yml", [("MODEL.SSE", ["True", "False"])], [0, 1, 2], [], str(tmp_path))
    claim_folder(plan)
    on, off = (os.path.join(tmp_path, s.folder) for s in plan.settings())
    # MODEL.SSE=True: 3 seeds selected on validation; seed 0 alone also tested at epoch 3
    for seed, (a, b) in enumerate([(0.50, 0.20), (0.56, 0.26), (0.59, 0.21)]):
        history = {1: {"ALL": metrics(a - 0.2, 0.3, 0.1), "O2S": metrics(b, 0.2, 0.1)},
                   2: {"ALL": metrics(a, 0.6, 0.3), "O2S": metrics(b, 0.2, 0.1)}}
        if seed == 0:
            history[3] = {"ALL": metrics(0.9, 0.9, 0.9), "O2S": metrics(0.9, 0.9, 0.9)}
        write_run(f"{on}/seed_{seed}", 2, {"ALL": metrics(a, 0.6 + seed / 10, 0.3), "O2S": metrics(b, 0.2, 0.1)},
                  1 + seed % 2, {"ALL": metrics(a - 0.01, 0.5, 0.2), "O2S": metrics(b + 0.01, 0.25, 0.15)},
                  "validation ALL/mAP", history)
    # MODEL.SSE=False: one finished seed, selected on the test set; seed 1 has only a checkpoint, seed 2 nothing
    write_run(f"{off}/seed_0", 2, {"ALL": metrics(0.30, 0.4, 0.1), "O2S": metrics(0.1, 0.1, 0.05)},
              1, {"ALL": metrics(0.33, 0.45, 0.12), "O2S": metrics(0.12, 0.1, 0.06)}, "test ALL/mAP",
              {1: {"ALL": metrics(0.33, 0.45, 0.12), "O2S": metrics(0.12, 0.1, 0.06)},
               2: {"ALL": metrics(0.30, 0.4, 0.1), "O2S": metrics(0.1, 0.1, 0.05)}})
    os.makedirs(f"{off}/seed_1/checkpoints")
    with open(f"{off}/seed_1/checkpoints/last_checkpoint", "w") as f:
        f.write("epoch_0001.pth\n")

    report = write_report(str(tmp_path), plan)
    expected = by_hand(plan)
    # the selections found: last and validation for SSE=True, last and test set for SSE=False; 2 protocols each
    assert {(k[0], k[2]) for k in expected} == {("MODEL.SSE=True", "last epoch"), ("MODEL.SSE=True", "validation"),
                                                ("MODEL.SSE=False", "last epoch"), ("MODEL.SSE=False", "test set †")}
    assert expected[("MODEL.SSE=True", "ALL", "last epoch")]["mAP"] == pytest.approx(
        (statistics.mean([50, 56, 59]), statistics.stdev([50, 56, 59])))
    assert_report_is(plan, expected)
    assert sorted(report.paths) == sorted(os.path.join(tmp_path, n) for n in ("report.csv", "report.md",
                                                                              "report.png"))
    # an explicit number: the sample std of 50, 56, 59 is sqrt(21) (the population one would be sqrt(14))
    assert float(read_csv(tmp_path)[("MODEL.SSE=True", "ALL", "last epoch")]["mAP_pct_std"]) == pytest.approx(21 ** .5)
    for text in (report.text, open(tmp_path / "report.md").read()):
        assert f"{off}/seed_1" in text and f"{off}/seed_2" in text and "2 of 6 runs have no results.json" in text
        assert "epoch(s) 3 evaluated on the test set by only some seeds" in text
        assert "† the epoch with the best test score" in text
        assert "30.00 ± –" in text  # one seed: no std

    # report.png: each setting's mean at each common epoch in its colour, the band between min and max blended
    found, _ = curves(collect(plan), "test", "ALL", "mAP")
    assert [(c.label, c.xs) for c in found] == [("MODEL.SSE=True", [1, 2]), ("MODEL.SSE=False", [1, 2])]
    assert found[0].mean == pytest.approx([statistics.mean([30, 36, 39]), statistics.mean([50, 56, 59])])
    assert (found[0].low, found[0].high) == (pytest.approx([30, 50]), pytest.approx([39, 59]))
    image = Image.open(tmp_path / "report.png").convert("RGB")
    frame = frame_for(found)
    for i, curve in enumerate(found):
        for x, y in zip(curve.xs, curve.mean):
            px, py = frame.px(x, y)
            assert image.getpixel((round(px), round(py))) == PALETTE[i]
    px, top = frame.px(1, found[0].high[0])
    _, mean_y = frame.px(1, found[0].mean[0])
    blend = tuple(round(c * BAND_ALPHA / 255 + 255 * (1 - BAND_ALPHA / 255)) for c in PALETTE[0])
    inside = image.getpixel((round(px) + 8, round((top + mean_y) / 2)))
    assert all(abs(a - b) <= 3 for a, b in zip(inside, blend)), (inside, blend)

    # the validation curves: these runs have none, and the earlier report.png does not stay to pass for them
    again = write_report(str(tmp_path), plan, split="validation")
    assert not (tmp_path / "report.png").exists() and "](report.png)" not in open(tmp_path / "report.md").read()
    assert "no epoch with a validation ALL evaluation in every seed" in again.text


def test_report_refuses_a_results_file_of_another_layout(tmp_path):
    plan = Plan("configs/hoss/transoss.yml", [], [0], [], str(tmp_path))
    claim_folder(plan)
    folder = tmp_path / "base" / "seed_0"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"ALL": {"mAP": 0.5}}))  # the layout before the contract
    with pytest.raises(ShipReIDError, match=f"{folder}/results.json: not a results file"):
        write_report(str(tmp_path), plan)


# ---------------------------------------------------------------------------------------------- plan and manifest
def test_grid_product_names_seeds_and_manifest(tmp_path, capsys):
    assert parse_grid("MODEL.SSE [True,False]") == ("MODEL.SSE", ["True", "False"])
    assert parse_grid("INPUT.SIZE_TRAIN [[256,128], [128, 64]]") == ("INPUT.SIZE_TRAIN", ["[256,128]", "[128,64]"])
    assert parse_grid("LOSS.TERMS [[id,triplet],[triplet]]") == ("LOSS.TERMS", ["[id,triplet]", "[triplet]"])
    assert parse_grid("SOLVER.BASE_LR [5e-4, 1e-3]") == ("SOLVER.BASE_LR", ["0.0005", "0.001"])
    for bad, message in [("MODEL.SSE", "expected"), ("MODEL.SSE True", "must be a non-empty list"),
                         ("MODEL.SSE []", "must be a non-empty list"), ("MODEL.SSE [True,True]", "more than once")]:
        with pytest.raises(SweepError, match=message):
            parse_grid(bad)

    out = str(tmp_path / "sweep")
    plan = make_plan(CONFIG, ["MODEL.SSE [True,False]", "MODEL.MIE [False,True]"], [0, 5], ["MODEL.DEVICE", "cpu"],
                     out)
    assert [s.name for s in plan.settings()] == ["MODEL.SSE=True,MODEL.MIE=False", "MODEL.SSE=True,MODEL.MIE=True",
                                                 "MODEL.SSE=False,MODEL.MIE=False", "MODEL.SSE=False,MODEL.MIE=True"]
    runs = plan.runs()
    assert [os.path.relpath(r.path, out) for r in runs[:2]] == ["MODEL.SSE=True,MODEL.MIE=False/seed_0",
                                                                "MODEL.SSE=True,MODEL.MIE=False/seed_5"]
    assert plan.train_args(runs[1])[-8:] == ["MODEL.SSE", "True", "MODEL.MIE", "False", "SEED", "5", "OUTPUT_DIR",
                                             os.path.abspath(runs[1].path)]
    # one process: python train.py; more: torchrun, standalone on one node, rendezvous at the first node on several
    assert train_command("py", ["A"], False) == ["py", TRAIN, "A"]
    assert train_command("py", ["A"], True, 4) == ["py", "-m", "torch.distributed.run", "--standalone",
                                                   "--nproc_per_node=4", TRAIN, "A", "--resume"]
    assert train_command("py", ["A"], False, 8, 2, 1, ("node7", 29123)) == [
        "py", "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--nproc_per_node=8",
        "--master_addr=node7", "--master_port=29123", TRAIN, "A"]
    # path values make folder names without separators; two values that would share one are refused
    plan = make_plan(CONFIG, ["MODEL.PRETRAIN_PATH [a/b.pth,c/d.pth]"], [0], [], out)
    assert [s.folder for s in plan.settings()] == ["MODEL.PRETRAIN_PATH=a_b.pth", "MODEL.PRETRAIN_PATH=c_d.pth"]
    with pytest.raises(SweepError, match="would share the folder MODEL.PRETRAIN_PATH=a_b.pth"):
        make_plan(CONFIG, ["MODEL.PRETRAIN_PATH [a/b.pth,a b.pth]"], [0], [], out)

    for grids, overrides, message in [
            ([], ["SEED", "3"], "SEED is set by the sweep"), (["OUTPUT_DIR [a,b]"], [], "OUTPUT_DIR is set by"),
            (["MODEL.SSE [True,False]"], ["MODEL.SSE", "True"], "both in --grid and a fixed override"),
            (["MODEL.SSE [True]", "MODEL.SSE [False]"], [], "names MODEL.SSE more than once"),
            (["MODEL.NOPE [1,2]"], [], "unknown config key MODEL.NOPE"),
            (["SOLVER.AMP [off,fp8]"], [], "the setting SOLVER.AMP=fp8 cannot run"),
            ([], ["MODEL.SSE"], "has no value")]:
        with pytest.raises(SweepError, match=message):
            make_plan(CONFIG, grids, [0], overrides, out)

    # the manifest: written once, refused when another plan meets it, the differences named
    plan = make_plan(CONFIG, ["MODEL.SSE [True,False]"], [0, 1], ["MODEL.DEVICE", "cpu"], out)
    assert claim_folder(plan) and not claim_folder(plan)
    with open(os.path.join(out, "sweep.json")) as f:
        assert json.load(f) == {"config_file": os.path.normpath(CONFIG), "seeds": [0, 1],
                                "grid": [{"key": "MODEL.SSE", "values": ["True", "False"]}],
                                "overrides": ["MODEL.DEVICE", "cpu"]}
    other = make_plan(CONFIG, ["MODEL.SSE [True,False]"], [0, 1, 2], ["MODEL.DEVICE", "cpu"], out)
    with pytest.raises(SweepError, match=r"sweep.json belongs to another sweep \(seeds: \[0, 1\] there, "
                                         r"\[0, 1, 2\] now\)"):
        claim_folder(other)
    # the command line refuses it too, before any run starts
    with pytest.raises(SweepError, match="belongs to another sweep"):
        sweep_main(["--config_file", CONFIG, "--seeds", "2", "--grid", "MODEL.SSE [False,True]", "--out", out,
                    "MODEL.DEVICE", "cpu"])
    assert sorted(os.listdir(out)) == ["sweep.json"]


@pytest.mark.parametrize("flags,message", [
    (["--timeout_min", "5"], "--timeout_min are for the submitit launchers"),
    (["--launcher", "slurm", "--gpus_per_node", "1"], "needs --timeout_min"),
    (["--launcher", "slurm", "--timeout_min", "5"], "needs --gpus_per_node"),
    (["--launcher", "submitit-local", "--timeout_min", "5", "--partition", "gpu"],
     "--partition are for --launcher slurm"),
    (["--launcher", "slurm", "--timeout_min", "5", "--gpus_per_node", "1", "--slurm_option", "qos"], "KEY=VALUE"),
    (["--seeds", "2", "--seed_list", "1,2"], "either --seeds"),
    (["--seed_list", "1,x"], "must be integers")])
def test_bad_flags_are_refused_by_name(flags, message, tmp_path):
    seeds = [] if any(f.startswith("--seed") for f in flags) else ["--seeds", "1"]
    with pytest.raises(SweepError, match=message):
        sweep_main(["--config_file", CONFIG, "--out", str(tmp_path / "s"), *seeds, *flags])
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------- real runs
def snapshot(path) -> tuple[int, bytes]:
    return os.stat(path).st_mtime_ns, open(path, "rb").read()


def test_killed_local_sweep_continues_with_the_missing_runs_and_reports_their_numbers(hoss_root, tmp_path, capsys):
    out = str(tmp_path / "sse")
    argv = ["--config_file", CONFIG, "--seeds", "2", "--grid", "MODEL.SSE [True,False]", "--out", out,
            "DATASETS.ROOT_DIR", hoss_root, *TINY_RUN]
    plan = make_plan(CONFIG, ["MODEL.SSE [True,False]"], [0, 1], ["DATASETS.ROOT_DIR", hoss_root, *TINY_RUN], out)
    runs = [r.path for r in plan.runs()]
    results = [os.path.join(r, "results.json") for r in runs]
    pointer = os.path.join(runs[2], "checkpoints", "last_checkpoint")

    # the sweep in its own process group; killed (SIGKILL, no chance to clean up) once the third run has saved its
    # first epoch, with the first two finished and the fourth not started
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, SWEEP, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.time() + 400
        while first.poll() is None and time.time() < deadline and not os.path.isfile(pointer):
            time.sleep(0.02)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the sweep and its train.py
        first.wait()
    text = (tmp_path / "first.log").read_text()
    assert os.path.isfile(pointer), text[-3000:]
    assert [os.path.isfile(p) for p in results] == [True, True, False, False], text[-3000:]
    assert not os.path.exists(runs[3])
    kept = {p: snapshot(p) for p in results[:2]}
    saved = os.path.join(runs[2], "checkpoints", open(pointer).read().strip())
    saved_before = snapshot(saved)

    capsys.readouterr()
    report = sweep_main(argv)
    printed = capsys.readouterr().out
    assert "4 run(s): 2 finished, 1 to resume, 1 to start" in printed
    assert "[1/2] MODEL.SSE=False seed 0: resuming" in printed and "[2/2] MODEL.SSE=False seed 1: starting" in printed
    assert {p: snapshot(p) for p in results[:2]} == kept  # finished runs untouched
    assert all(os.path.isfile(p) for p in results)
    # the third run continued from its checkpoint (which it did not rewrite), the fourth started fresh
    assert snapshot(saved) == saved_before
    launches = open(os.path.join(runs[2], "launch.log")).read()
    assert launches.count("==== ") == 2 and " resume: " in launches and launches.rstrip().count("--resume") == 1
    assert "resumed from" in open(os.path.join(runs[2], "train.log")).read()
    assert "--resume" not in open(os.path.join(runs[3], "launch.log")).read()

    # the report: every number the by-hand aggregation of the four runs' results files gives
    expected = by_hand(plan)
    assert {k[2] for k in expected} == {"last epoch", "test set †"}
    assert all(e["n"] == 2 for e in expected.values()) and len(expected) == 2 * 3 * 2
    assert_report_is(plan, expected)
    assert report.paths == sorted(os.path.join(out, n) for n in ("report.csv", "report.md", "report.png"))
    assert "setting" in printed and "MODEL.SSE=False" in printed.split("setting", 1)[1]

    # once more: nothing left to train; `report` alone rewrites the same tables
    csv_before = open(os.path.join(out, "report.csv")).read()
    sweep_main(argv)
    assert "4 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    assert {p: snapshot(p) for p in results[:2]} == kept
    sweep_main(["report", out])
    assert open(os.path.join(out, "report.csv")).read() == csv_before


def test_failed_runs_do_not_stop_the_others_and_are_named_with_their_logs(tmp_path):
    out = str(tmp_path / "fail")
    missing = str(tmp_path / "no_such_root")
    with pytest.raises(SweepError) as err:
        sweep_main(["--config_file", CONFIG, "--seeds", "2", "--out", out, "DATASETS.ROOT_DIR", missing, *TINY_RUN])
    message = str(err.value)
    assert message.startswith("2 of 2 run(s) did not finish")
    for seed in (0, 1):  # the second run was tried after the first failed
        log = os.path.join(out, "base", f"seed_{seed}", "launch.log")
        assert f"{out}/base/seed_{seed}: failed (exit code 2); its log: {log}; it ends with: error: " in message
        assert missing in open(log).read()
    assert not os.path.exists(os.path.join(out, "report.md"))


def test_submitit_local_jobs_train_and_a_failing_job_is_reported(hoss_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the jobs find this repository's code from anywhere
    out = str(tmp_path / "jobs")
    missing = str(tmp_path / "no_such_root")
    with pytest.raises(SweepError) as err:
        sweep_main(["--config_file", CONFIG, "--seeds", "1", "--grid", f"DATASETS.ROOT_DIR [{hoss_root},{missing}]",
                    "--out", out, "--launcher", "submitit-local", "--timeout_min", "10", "--poll_s", "0.5",
                    *TINY_RUN])
    plan = make_plan(CONFIG, [f"DATASETS.ROOT_DIR [{hoss_root},{missing}]"], [0], TINY_RUN, out)
    good, bad = (r.path for r in plan.runs())
    printed = capsys.readouterr().out
    # each run a submitit job of its own, recorded in its folder
    jobs = [json.load(open(os.path.join(p, "job.json"))) for p in (good, bad)]
    assert [j["launcher"] for j in jobs] == ["submitit-local"] * 2 and jobs[0]["job_id"] != jobs[1]["job_id"]
    assert all(f"submitted as job {j['job_id']}" in printed for j in jobs)
    assert os.path.isdir(os.path.join(out, "submitit"))
    # the good job trained through train.py in the job
    assert "==== " in open(os.path.join(good, "launch.log")).read()
    with open(os.path.join(good, "results.json")) as f:
        assert json.load(f)["epoch"] == 2
    # the bad one: its folder, its log and submitit's log named; the report has the good one
    message = str(err.value)
    assert message.startswith("1 of 2 run(s) did not finish") and f"{bad}: job {jobs[1]['job_id']} failed" in message
    assert f"its log: {os.path.join(bad, 'launch.log')}; it ends with: error: HOSS folder not found" in message
    assert f"submitit's log: {os.path.join(out, 'submitit', jobs[1]['job_id'])}_0_log.err" in message
    assert missing in open(os.path.join(bad, "launch.log")).read()
    expected = by_hand(plan)
    assert {k[0] for k in expected} == {plan.settings()[0].name}
    assert_report_is(plan, expected)


def test_a_job_told_to_checkpoint_saves_and_its_requeued_copy_resumes(hoss_root, tmp_path, monkeypatch):
    """What submitit does on SLURM's warning before the time limit, driven by hand: TrainJob.checkpoint() stops
    train.py, which saves its state, and returns the job to requeue, which resumes the run to its end. train.py
    ignores the warning signal itself (it is submitit's)."""
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "1", "SUBMITIT_LOCAL_NTASKS": "1",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0"}.items():
        monkeypatch.setenv(key, value)
    # long enough (30 epochs, about 8 s on an idle 2-core machine) that the run cannot end before it is told to stop
    overrides = {**dict(zip(TINY_RUN[::2], TINY_RUN[1::2])), "SOLVER.MAX_EPOCHS": "30", "SOLVER.EVAL_PERIOD": "0"}
    plan = make_plan(CONFIG, [], [0], ["DATASETS.ROOT_DIR", hoss_root, *(x for kv in overrides.items() for x in kv)],
                     str(tmp_path / "job"))
    run = plan.runs()[0]
    job = TrainJob(sys.executable, plan.train_args(run), os.path.abspath(run.path), REPO, 1)
    ended = []
    thread = threading.Thread(target=lambda: ended.append(_outcome(job)))
    thread.start()
    train_log = os.path.join(run.path, "train.log")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.isfile(train_log) and "epoch 1 iter 5/" in open(train_log).read()):
        time.sleep(0.02)
    process = job._process.proc
    process.send_signal(submitit_warning())
    time.sleep(1)
    assert process.poll() is None  # ignored by train.py
    requeued = job.checkpoint()
    thread.join()
    launch_log = os.path.join(run.path, "launch.log")
    assert "stopped by SIGTERM" in open(launch_log).read(), ended
    assert not os.path.isfile(os.path.join(run.path, "results.json"))
    saved = open(os.path.join(run.path, "checkpoints", "last_checkpoint")).read().strip()

    again = pickle.loads(pickle.dumps(requeued))  # as submitit stores it for the requeued job
    assert again.result() == f"{os.path.abspath(run.path)}: node 0 done"
    assert os.path.isfile(os.path.join(run.path, "results.json"))
    assert f"resumed from {os.path.abspath(run.path)}/checkpoints/{saved}" in open(train_log).read()
    assert open(launch_log).read().count(" resume: ") == 1


def _outcome(job) -> str:
    try:
        return job()
    except SweepError as err:
        return str(err)


def submitit_warning() -> int:
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
