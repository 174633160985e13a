"""Train a recipe over a grid of override sets x seeds, one train.py run per folder, then report each setting's
mean ± std over seeds; run again, the same command continues a killed sweep. `report` reports on a sweep folder.

  python tools/sweep.py --config_file configs/hoss/transoss.yml --seeds 3 --grid "MODEL.SSE [True,False]" \\
      --out logs/sse_ablation DATASETS.ROOT_DIR data
  python tools/sweep.py ... --launcher slurm --partition gpu --nodes 1 --gpus_per_node 4 --cpus_per_task 32 \\
      --timeout_min 1440 --slurm_option account=myproject
  python tools/sweep.py report logs/sse_ablation

Runs: <out>/<setting>/seed_<s>/ is each run's OUTPUT_DIR, a setting named by its grid values (MODEL.SSE=True;
several --grid flags give their product, named KEY=VALUE,KEY=VALUE). --seeds N trains SEED 0..N-1, --seed_list
3,7,11 those values. <out>/sweep.json records the recipe, grid, seeds and overrides; another sweep's folder is
refused. A run with results.json is skipped, one with checkpoints resumes (train.py --resume). A failed run does not
stop the others; the failures are listed at the end (exit status 2). Details: docs/reporting.md.
"""
from __future__ import annotations

import argparse
import shlex
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import parse_args  # noqa: E402
from processor.results import read_results  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.sweep_launch import JobOptions, launch_local, launch_submitit, run_state, train_command  # noqa: E402
from utils.sweep_plan import SweepError, claim_folder, load_plan, make_plan, seed_values  # noqa: E402
from utils.sweep_report import write_report  # noqa: E402

LAUNCHERS = ("local", "slurm", "submitit-local")
JOB_FLAGS = ("gpus_per_node", "timeout_min", "cpus_per_task", "partition", "slurm_option")


def sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--config_file", required=True, help="the recipe every run trains (YAML)")
    parser.add_argument("--out", required=True, help="the sweep folder: sweep.json, one folder per run, the report")
    parser.add_argument("--grid", action="append", default=[], metavar='"KEY [V1,V2,...]"',
                        help="a key and its values (read like a KEY VALUE override); repeat for their product")
    parser.add_argument("--seeds", type=int, help="train SEED 0..N-1 for every setting")
    parser.add_argument("--seed_list", help="train these SEED values, e.g. 3,7,11 (instead of --seeds)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local",
                        help="local: one run after another here; slurm: a SLURM job per run (submitit); "
                             "submitit-local: submitit's jobs on this machine (tests, debugging the job path)")
    parser.add_argument("--nproc_per_node", type=int,
                        help="training processes per node, through torchrun when > 1 (default: 1 for local, "
                             "--gpus_per_node for the submitit launchers)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per run (slurm)")
    parser.add_argument("--gpus_per_node", type=int, help="GPUs per node of each job (slurm: required)")
    parser.add_argument("--cpus_per_task", type=int, help="CPUs of each job's node task (slurm; SLURM's default "
                                                          "otherwise)")
    parser.add_argument("--timeout_min", type=int, help="time limit of each job, minutes (submitit launchers: "
                                                        "required); a job that reaches it saves and is requeued")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--slurm_option", action="append", default=[], metavar="KEY=VALUE",
                        help="another sbatch option, e.g. account=myproject or qos=high; repeatable")
    parser.add_argument("--poll_s", type=float, help="seconds between checks of the submitted jobs (default: 60 for "
                                                     "slurm, 2 for submitit-local)")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and what each would do; start none")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help="overrides for every run")
    return parser


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sweep.py report", description="Write report.md, report.csv and "
                                     "report.png of a sweep folder and print its table.")
    parser.add_argument("out", help="the sweep folder (--out of the sweep)")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the evaluations the curves of report.png follow")
    parser.add_argument("--protocol", default="ALL", help="the protocol of the curves")
    parser.add_argument("--metric", choices=("mAP", "R1", "R5", "R10", "mINP"), default="mAP",
                        help="the metric of the curves")
    return parser


def _slurm_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise SweepError(f"--slurm_option {pair!r}: expected KEY=VALUE, e.g. account=myproject")
        options[key] = value
    return options


def _check_launcher_flags(args) -> None:
    """Flags that the chosen launcher would not use are refused, not ignored."""
    given = [f for f in JOB_FLAGS if getattr(args, f) not in (None, [])]
    if args.launcher == "local":
        unused = given + (["nodes"] if args.nodes != 1 else [])
        if unused:
            raise SweepError(f"--{', --'.join(unused)} are for the submitit launchers (--launcher slurm or "
                             "submitit-local), not --launcher local")
        if args.poll_s is not None:
            raise SweepError("--poll_s is for the submitit launchers, not --launcher local")
        return
    if args.timeout_min is None:
        raise SweepError(f"--launcher {args.launcher} needs --timeout_min, each job's time limit in minutes")
    if args.launcher == "slurm" and args.gpus_per_node is None:
        raise SweepError("--launcher slurm needs --gpus_per_node (0 for CPU jobs)")
    if args.launcher == "submitit-local":
        unused = [f for f in ("cpus_per_task", "partition", "slurm_option") if f in given]
        if unused or args.nodes != 1:
            raise SweepError(f"--{', --'.join(unused or ['nodes'])} are for --launcher slurm; submitit-local runs "
                             "one node here")
    for name in ("nodes", "timeout_min"):
        if getattr(args, name) < 1:
            raise SweepError(f"--{name} must be at least 1, got {getattr(args, name)}")


def sweep(argv: list[str]):
    args = parse_args(sweep_parser(), argv)
    _check_launcher_flags(args)
    nproc = args.nproc_per_node if args.nproc_per_node is not None else (
        1 if args.launcher == "local" else max(1, args.gpus_per_node or 0))
    if nproc < 1:
        raise SweepError(f"--nproc_per_node must be at least 1, got {nproc}")
    slurm_options = _slurm_options(args.slurm_option)
    plan = make_plan(args.config_file, args.grid, seed_values(args.seeds, args.seed_list), args.opts, args.out)
    claim_folder(plan, write=not args.dry_run)
    runs = plan.runs()
    states = {run: run_state(run.path) for run in runs}
    for run, state in states.items():
        if state == "finished":  # a results.json that is not a finished run's stops the sweep, named
            read_results(os.path.join(run.path, "results.json"))
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("finished", "resume", "new")}
    print(f"sweep {plan.out}: {len(plan.settings())} setting(s) x {len(plan.seeds)} seed(s) = {len(runs)} run(s): "
          f"{counts['finished']} finished, {counts['resume']} to resume, {counts['new']} to start", flush=True)
    pending = [run for run in runs if states[run] != "finished"]
    if args.dry_run:
        for run in runs:
            what = {"finished": "finished: skipped", "resume": "resume", "new": "start"}[states[run]]
            print(f"  {run.path}: {what}")
            if run in pending:
                print("    " + shlex.join(train_command(sys.executable, plan.train_args(run), states[run] == "resume",
                                                      nproc)))
        return None
    failures = []
    if pending and args.launcher == "local":
        failures = launch_local(plan, pending, nproc)
    elif pending:
        options = JobOptions(args.timeout_min, args.gpus_per_node or 0, args.nodes, args.cpus_per_task,
                             args.partition, slurm_options)
        poll_s = args.poll_s if args.poll_s is not None else (60.0 if args.launcher == "slurm" else 2.0)
        failures = launch_submitit(plan, pending, args.launcher, options, nproc, poll_s)
    report = None
    if any(run_state(run.path) == "finished" for run in runs):
        report = write_report(plan.out, plan)
        print(report.text)
        print("wrote " + ", ".join(report.paths), flush=True)
    if failures:
        raise SweepError(f"{len(failures)} of {len(runs)} run(s) did not finish (the others are reported above); "
                         "fix the cause and run the same command again to train them:\n  " +
                         "\n  ".join(map(str, failures)))
    return report


def report(argv: list[str]):
    args = report_parser().parse_args(argv)
    result = write_report(args.out, load_plan(args.out), args.split, args.protocol, args.metric)
    print(result.text)
    print("wrote " + ", ".join(result.paths))
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report(argv[1:])
    return sweep(argv)


if __name__ == "__main__":
    run_cli(main)
