"""Running a sweep's runs: one after another in subprocesses (`local`), or as submitit jobs (`slurm`, or
`submitit-local` to try the job path on one machine), each running train.py, through torchrun for more than one
process. Every run appends train.py's console output to its own <run>/launch.log.

What a run does is decided when it starts, from its folder: nothing when results.json exists, `--resume` when its
checkpoints/last_checkpoint does, else a fresh start. A run that ends without results.json has failed (or was stopped
by SIGTERM, and resumes next time); the others go on, and the failures are reported at the end.
"""
from __future__ import annotations

import codecs
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass

import submitit
from submitit.core.utils import UncompletedJobError

from processor.results import read_results

from .logger import hms
from .sweep_plan import Plan, Run, SweepError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "train.py")
LAUNCH_LOG = "launch.log"
JOB_FILE = "job.json"          # the submitit job a run was last submitted as
SUBMITIT_FOLDER = "submitit"   # under --out: submitit's pickles and logs
SLURM_ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING")


def run_state(path: str) -> str:
    """"finished" (results.json), "resume" (a checkpoint pointer, no results.json) or "new"."""
    if os.path.isfile(os.path.join(path, "results.json")):
        return "finished"
    if os.path.isfile(os.path.join(path, "checkpoints", "last_checkpoint")):
        return "resume"
    return "new"


def train_command(python: str, train_args: list[str], resume: bool, nproc_per_node: int = 1, nnodes: int = 1,
                  node_rank: int = 0, master: tuple[str, int] | None = None) -> list[str]:
    """train.py under `python`, or under torchrun for more than one process (several nodes meet at `master`)."""
    if nnodes > 1:
        launcher = [python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
                    f"--nproc_per_node={nproc_per_node}", f"--master_addr={master[0]}", f"--master_port={master[1]}"]
    elif nproc_per_node > 1:
        launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}"]
    else:
        launcher = [python]
    return [*launcher, TRAIN, *train_args, *(["--resume"] if resume else [])]


def headline(path: str) -> str:
    """The first protocol's test mAP of a finished run, for progress lines."""
    metrics = read_results(os.path.join(path, "results.json"))["metrics"]
    protocol = next(iter(metrics))
    return f"test {protocol} mAP {100 * metrics[protocol]['mAP']:.2f} %"


def _log_header(log, cmd: list[str], resume: bool) -> None:
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {shlex.join(cmd)}\n")
    log.flush()


class LoggedProcess:
    """A command whose output (stdout and stderr) is appended to a log file, and with `echo` also copied to this
    process's stdout. A thread drains the output and reaps the process, so the main thread only waits on an event:
    a signal handler running in the main thread (submitit's checkpoint) can stop the process and wait for it."""

    def __init__(self, cmd: list[str], log_path: str, cwd: str, resume: bool, echo: bool, preexec_fn=None):
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log = open(log_path, "a", buffering=1)
        _log_header(self.log, cmd, resume)
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE if echo else self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
        self.exited = threading.Event()
        threading.Thread(target=self._drain_and_reap, daemon=True).start()

    def _drain_and_reap(self) -> None:
        if self.proc.stdout is not None:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            while chunk := os.read(self.proc.stdout.fileno(), 65536):
                text = decoder.decode(chunk)
                self.log.write(text)
                sys.stdout.write(text)
                sys.stdout.flush()
            self.proc.stdout.close()
        self.proc.wait()
        self.log.close()
        self.exited.set()

    def wait(self) -> int:
        while not self.exited.wait(1.0):
            pass
        return self.proc.returncode

    def stop(self, timeout_s: float) -> None:
        """SIGTERM (train.py saves its state and exits), SIGKILL after `timeout_s`."""
        if self.exited.is_set():
            return
        self.proc.send_signal(signal.SIGTERM)
        if not self.exited.wait(timeout_s):
            self.proc.kill()
            self.exited.wait()


@dataclass
class Failure:
    run: Run
    reason: str

    def __str__(self) -> str:
        return f"{self.run.path}: {self.reason}"


def _last_line(path: str) -> str:
    """The last non-empty line of a log (what a failed train.py printed last), or ""."""
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 8192))
        lines = [line.strip() for line in f.read().decode(errors="replace").replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


def _unfinished(path: str, code: int | None) -> str:
    """Why the run in `path` that ended without results.json did not finish, naming its log."""
    log = os.path.join(path, LAUNCH_LOG)
    how = ("exited with 0 before its end (stopped by SIGTERM: it resumes when the sweep is run again)" if code == 0
           else f"failed (exit code {code})" if code is not None else "no results.json")
    last = _last_line(log)
    return f"{how}; its log: {log}" + (f"; it ends with: {last}" if last else "")


class Progress:
    """[k/n] lines with each run's time and an estimate of what is left from the runs timed so far."""

    def __init__(self, total: int):
        self.total, self.done, self.durations = total, 0, []

    def started(self, run: Run, resume: bool, where: str) -> float:
        print(f"sweep: [{self.done + 1}/{self.total}] {run.label}: {'resuming' if resume else 'starting'} "
              f"({where})", flush=True)
        return time.time()

    def ended(self, run: Run, started: float | None, outcome: str) -> None:
        self.done += 1
        text = f"sweep: [{self.done}/{self.total}] {run.label}: {outcome}"
        if started is not None:
            self.durations.append(time.time() - started)
            text += f" in {hms(self.durations[-1])}"
            left = self.total - self.done
            if left:
                text += f"; about {hms(left * sum(self.durations) / len(self.durations))} left for {left} run(s)"
        print(text, flush=True)


def launch_local(plan: Plan, runs: list[Run], nproc_per_node: int = 1, echo: bool = True) -> list[Failure]:
    """Train `runs` one after another in this machine's subprocesses. A SIGTERM to the sweep is passed on to the
    run in progress (which saves a checkpoint) and stops the sweep after it."""
    failures, progress, stop = [], Progress(len(runs)), []
    current: list[LoggedProcess] = []

    def forward(signum, frame):
        stop.append(signum)
        for process in current:
            process.proc.send_signal(signal.SIGTERM)
    previous = signal.signal(signal.SIGTERM, forward) if threading.current_thread() is threading.main_thread() else None
    try:
        for run in runs:
            if stop:
                break
            resume = run_state(run.path) == "resume"
            cmd = train_command(sys.executable, plan.train_args(run), resume, nproc_per_node)
            started = progress.started(run, resume, f"log: {os.path.join(run.path, LAUNCH_LOG)}")
            process = LoggedProcess(cmd, os.path.join(run.path, LAUNCH_LOG), os.getcwd(), resume, echo)
            current[:] = [process]
            try:
                code = process.wait()
            except KeyboardInterrupt:
                process.stop(60)  # a Ctrl-C in the terminal reached train.py too; otherwise it saves and exits
                raise SweepError(f"interrupted during {run.path}; run the same command again to continue "
                                 "(finished runs are kept, this one resumes from its last checkpoint)") from None
            current.clear()
            if run_state(run.path) == "finished":
                progress.ended(run, started, f"finished, {headline(run.path)}")
            else:
                failures.append(Failure(run, _unfinished(run.path, code)))
                progress.ended(run, started, failures[-1].reason)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if stop:
        raise SweepError("the sweep got SIGTERM: the run in progress saved its state; run the same command again "
                         "to continue")
    return failures


# ---------------------------------------------------------------------------------------------- submitit
class TrainJob:
    """A submitit job: one run, its torchrun started on every node of the job (one task per node).

    On SLURM's warning before the time limit (or a preemption), submitit calls checkpoint() in the job's first
    task: train.py gets SIGTERM, saves a mid-epoch checkpoint and exits, and the job is requeued; the requeued job
    finds the checkpoint and resumes. train.py itself ignores submitit's warning signal, which is for this process.
    """

    def __init__(self, python: str, train_args: list[str], run_path: str, cwd: str, nproc_per_node: int,
                 stop_timeout_s: float = 60.0):
        self.python, self.train_args, self.run_path, self.cwd = python, train_args, run_path, cwd
        self.nproc_per_node, self.stop_timeout_s = nproc_per_node, stop_timeout_s
        self._process: LoggedProcess | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_process"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _process=None)

    def __call__(self) -> str:
        env = submitit.JobEnvironment()
        state = run_state(self.run_path)
        if state == "finished":
            return f"{self.run_path}: already finished"
        resume = state == "resume"
        master = (env.hostnames[0], 20000 + zlib.crc32(env.job_id.encode()) % 20000) if env.num_nodes > 1 else None
        cmd = train_command(self.python, self.train_args, resume, self.nproc_per_node, env.num_nodes, env.node,
                            master)
        log = os.path.join(self.run_path, LAUNCH_LOG if env.node == 0 else f"launch_node{env.node}.log")
        warning = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        self._process = LoggedProcess(cmd, log, self.cwd, resume, echo=False,
                                      preexec_fn=lambda: signal.signal(warning, signal.SIG_IGN))
        code = self._process.wait()
        self._process = None
        # results.json is rank 0's (first node's) to write
        if code != 0 or (env.global_rank == 0 and run_state(self.run_path) != "finished"):
            raise SweepError(f"{self.run_path}: node {env.node}: {_unfinished(self.run_path, code)}")
        return f"{self.run_path}: node {env.node} done"

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        if self._process is not None:
            self._process.stop(self.stop_timeout_s)
        return submitit.helpers.DelayedSubmission(TrainJob(self.python, self.train_args, self.run_path, self.cwd,
                                                           self.nproc_per_node, self.stop_timeout_s))


@dataclass
class JobOptions:
    timeout_min: int
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int | None = None
    partition: str | None = None
    slurm_options: dict | None = None       # more sbatch options, e.g. {"account": "x", "qos": "high"}


def make_executor(launcher: str, folder: str, options: JobOptions) -> submitit.AutoExecutor:
    cluster = {"slurm": "slurm", "submitit-local": "local"}[launcher]
    # the job imports this module when it unpickles its TrainJob: the repository must be on its path
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    python = f"env PYTHONPATH={shlex.quote(path)} {shlex.quote(sys.executable)}"
    executor = submitit.AutoExecutor(folder, cluster=cluster, slurm_python=python, local_python=python)
    params = dict(name="shipreid-sweep", timeout_min=options.timeout_min, nodes=options.nodes, tasks_per_node=1,
                  gpus_per_node=options.gpus_per_node)
    if options.cpus_per_task is not None:
        params["cpus_per_task"] = options.cpus_per_task
    if cluster == "slurm":
        if options.partition:
            params["slurm_partition"] = options.partition
        if options.slurm_options:
            params["slurm_additional_parameters"] = dict(options.slurm_options)
    executor.update_parameters(**params)
    return executor


def _record_job(run: Run, launcher: str, job, folder: str) -> None:
    with open(os.path.join(run.path, JOB_FILE), "w") as f:
        json.dump({"launcher": launcher, "job_id": job.job_id, "submitit_folder": os.path.abspath(folder)}, f)
        f.write("\n")


def _active_slurm_job(run: Run):
    """The SLURM job a previous sweep submitted for `run`, if it is still queued or running (else None)."""
    path = os.path.join(run.path, JOB_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get("launcher") != "slurm":
        return None
    job = submitit.SlurmJob(record["submitit_folder"], record["job_id"])
    return job if job.state in SLURM_ACTIVE else None


def _job_outcome(job) -> str:
    try:
        return "failed" if job.exception() is not None else "ended"
    except UncompletedJobError:  # no result file: killed, timed out or cancelled
        return f"ended without a result ({job.state})"


def launch_submitit(plan: Plan, runs: list[Run], launcher: str, options: JobOptions, nproc_per_node: int,
                    poll_s: float) -> list[Failure]:
    """Submit `runs` as one job each (a job array) and wait for them, printing each as it ends. A SLURM job that a
    previous sweep submitted and that is still queued or running is waited for, not submitted again. Stopping the
    wait (Ctrl-C) leaves SLURM jobs running; the same command waits for them again."""
    folder = os.path.join(plan.out, SUBMITIT_FOLDER)
    executor = make_executor(launcher, folder, options)
    jobs, to_submit = {}, []
    for run in runs:
        active = _active_slurm_job(run) if launcher == "slurm" else None
        if active is not None:
            print(f"sweep: {run.label}: still {active.state} as SLURM job {active.job_id}: waiting for it", flush=True)
            jobs[run] = active
        else:
            to_submit.append(run)
    if to_submit:
        for run in to_submit:
            os.makedirs(run.path, exist_ok=True)
        with executor.batch():
            submitted = [executor.submit(TrainJob(sys.executable, plan.train_args(run), os.path.abspath(run.path),
                                                  os.getcwd(), nproc_per_node)) for run in to_submit]
        for run, job in zip(to_submit, submitted):
            _record_job(run, launcher, job, folder)
            jobs[run] = job
            print(f"sweep: {run.label}: submitted as job {job.job_id} ({run_state(run.path)}; log: "
                  f"{os.path.join(run.path, LAUNCH_LOG)}, submitit's: {job.paths.stderr})", flush=True)
    failures, progress, pending, states = [], Progress(len(jobs)), dict(jobs), {}
    try:
        while pending:
            time.sleep(poll_s)
            for run, job in list(pending.items()):
                if not job.done():
                    if states.get(run) != job.state:  # queued -> running, requeued, ...
                        states[run] = job.state
                        print(f"sweep: {run.label}: job {job.job_id} {job.state}", flush=True)
                    continue
                del pending[run]
                if run_state(run.path) == "finished":
                    progress.ended(run, None, f"finished, {headline(run.path)}")
                    continue
                # train.py's own last words are in launch.log; a job that failed before or around it (an import
                # error, a kill) is explained in submitit's log
                reason = f"job {job.job_id} {_job_outcome(job)}, {_unfinished(run.path, None)}; submitit's log: " \
                         f"{job.paths.stderr}"
                failures.append(Failure(run, reason))
                progress.ended(run, None, reason)
    except KeyboardInterrupt:
        if launcher != "slurm":
            raise SweepError("interrupted: the local jobs got the Ctrl-C too; run the same command again to continue "
                             "(finished runs are kept, the others resume from their last checkpoint)") from None
        left = ", ".join(j.job_id for j in pending.values())
        raise SweepError(f"stopped waiting; the SLURM job(s) {left} go on: run the same command again to wait for "
                         "them and report") from None
    return failures
