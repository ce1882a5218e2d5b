"""`ldl sweep FILE --executor slurm`: each run of a sweep as its own submitit job; and `--status`,
the state of every run of a sweep folder, whichever executor filled it.

One SLURM job per run, with its own log folder (<sweep>/logs/<run id>/<job id>_<task>_log.out,
stderr included, appended across requeues).  `submitit-local` (a process per job) and
`submitit-debug` (in this process, pdb on an error) run the very same job on this machine.  The job
trains inside submitit's process, so submitit's signal handling stays in charge, held to the next
batch boundary (ldl.lifeline.deferred_signal): on preemption or before the time limit (SIGUSR2) it
asks `RunJob.checkpoint` what to run after the requeue, and that is the same job again, which finds
the run's last epoch checkpoint and continues it as `ldl train --resume` does (model, optimiser,
per-sample state, RNG: the numbers end as an uninterrupted run's).  Only the work since that
checkpoint is done twice.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from ldl.lifeline import deferred_signal
from ldl.rendezvous import from_submitit
from ldl.runlock import ALIVE_STATES, RunLockedError, live_owner, slurm_states
from ldl.sweep import ERROR_CHARS, ERROR_FILE, RUNNING_ELSEWHERE, STATUS_FILE, SweepError, SweepRun, expand, train_args

CLUSTERS = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}  # ours -> submitit's
SLURM_KEYS = ("partition", "time", "gpus", "cpus", "mem", "nodes", "account", "setup", "timeouts")
COUNT_KEYS = ("gpus", "cpus", "nodes", "timeouts")   # whole numbers, checked before anything is submitted
DEFAULT_TIME_MIN = 240
LOG_DIR = "logs"


def slurm_options(spec: dict, given: dict[str, Any]) -> dict[str, Any]:
    """The sweep file's `slurm:` block with the command line's options (those given) on top."""
    block = spec.get("slurm") or {}
    if not isinstance(block, dict):
        raise SweepError(f"'slurm' must map options to values ({', '.join(SLURM_KEYS)})")
    options = {**block, **{k: v for k, v in given.items() if v is not None}}
    unknown = sorted(set(options) - set(SLURM_KEYS))
    if unknown:
        raise SweepError(f"slurm: unknown option(s) {', '.join(unknown)} (known: {', '.join(SLURM_KEYS)})")
    if "time" in options:
        options["time"] = _minutes(options["time"])  # checked before anything is submitted
    if "mem" in options and str(options["mem"]).replace(".", "", 1).isdigit():
        options["mem"] = f"{options['mem']}G"   # a bare number means GB, from the file or the command line alike
    for key in COUNT_KEYS:
        if key in options:
            try:
                options[key] = int(options[key])
            except (TypeError, ValueError):
                raise SweepError(f"slurm {key}: a whole number, got {options[key]!r}") from None
    return options


def _minutes(value: Any) -> int:
    """A SLURM time limit in minutes: a number of minutes, HH:MM:SS or D-HH:MM:SS."""
    text = str(value)
    try:
        if text.isdigit():
            return int(text)
        days, _, clock = text.rpartition("-")
        hours, minutes, seconds = (int(part) for part in clock.split(":"))
        return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)
    except ValueError:
        raise SweepError(f"slurm time: minutes, HH:MM:SS or D-HH:MM:SS, got {value!r}") from None


def _executor(cluster: str, folder: Path, options: dict[str, Any], name: str) -> Any:
    """A submitit executor for one run: one task per GPU on each node (a CPU run: one task)."""
    import submitit

    timeouts = options.get("timeouts", 3)  # requeues after hitting the time limit; preemptions are free
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=timeouts,
                                     local_max_num_timeout=timeouts)
    gpus = options.get("gpus", 0)
    params: dict[str, Any] = {"name": name, "timeout_min": options.get("time", DEFAULT_TIME_MIN),
                              "nodes": options.get("nodes", 1), "tasks_per_node": max(gpus, 1),
                              "gpus_per_node": gpus, "stderr_to_stdout": True}
    if "cpus" in options:
        params["cpus_per_task"] = options["cpus"]
    slurm_only = {"partition": options.get("partition"), "account": options.get("account"),
                  "mem": options.get("mem"),
                  "setup": list(options["setup"]) if options.get("setup") else None}
    executor.update_parameters(**params, **{f"slurm_{k}": v for k, v in slurm_only.items() if v is not None})
    return executor


class RunJob:
    """One run of a sweep as a submitit job: pickled by the sweep, called on the node."""

    def __init__(self, spec: dict, run: SweepRun, run_dir: Path) -> None:
        self.spec, self.run, self.run_dir = spec, run, run_dir

    def __call__(self) -> str:
        from ldl.cli import parse_args

        if (self.run_dir / "summary.json").is_file():
            return "finished"  # a second job for a run that ended meanwhile
        os.environ.update(from_submitit())
        args = parse_args(["train", *train_args(self.spec, self.run, self.run_dir)])  # resumes from a checkpoint
        try:
            with deferred_signal(signal.SIGUSR2):   # submitit's requeue acts between batches
                args.func(args)
        except RunLockedError:  # another live process took the folder since the sweep looked
            return RUNNING_ELSEWHERE
        except Exception:
            if os.environ.get("RANK", "0") == "0":
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / ERROR_FILE).write_text(traceback.format_exc()[-ERROR_CHARS:])
            raise
        return "finished"

    def checkpoint(self) -> Any:
        """What submitit runs once it has requeued a preempted or timed-out job: this job again.
        The run saves a checkpoint at every epoch end, so there is nothing to save here."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(RunJob(self.spec, self.run, self.run_dir))


def _slurm_jobs(status: dict, runs: list[SweepRun]) -> dict[str, str]:
    """{run_id: SLURM job id} of the runs last submitted to SLURM."""
    return {r.run_id: status[r.run_id]["job_id"] for r in runs if status.get(r.run_id, {}).get("executor") == "slurm"}


def _read_status(out_dir: Path) -> dict:
    path = out_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _log_file(out_dir: Path, run_id: str) -> Path | None:
    """The run's newest log: its first task's submitit log, or the local executor's <run id>.log."""
    found = [*(out_dir / LOG_DIR / run_id).glob("*_0_log.out"), out_dir / f"{run_id}.log"]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _tail(path: Path | None, lines: int) -> list[str]:
    if path is None or not path.is_file():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]


def _ended(run_dir: Path, log: Path | None, record: dict, job_state: str) -> dict:
    """The record of a run whose job has ended: finished, running elsewhere, or failed."""
    if (run_dir / "summary.json").is_file():
        return {**record, "state": "finished"}
    owner = live_owner(run_dir)
    if owner is not None:
        return {**record, "state": RUNNING_ELSEWHERE, "owner": str(owner)}
    error = run_dir / ERROR_FILE
    if not error.is_file():  # ended without a Python error: killed (memory, SIGKILL) or a lost node
        run_dir.mkdir(parents=True, exist_ok=True)
        error.write_text("\n".join([f"job {record['job_id']} ended without a result (state {job_state}); "
                                    "its log ends:", *_tail(log, 20)]))
    return {**record, "state": "failed", "error": error.read_text()[-ERROR_CHARS:]}


def run_submitit(spec: dict, out_dir: Path, executor: str, options: dict[str, Any], seed: int = 0,
                 progress: bool = True) -> dict:
    """Submit each run that is neither finished, nor running elsewhere, nor (SLURM) still queued, as
    its own job; wait for those jobs; return {run_id: status} as run_local does.  Stopping the wait
    leaves SLURM jobs to run (`--status` follows them)."""
    try:
        import submitit
    except ImportError:
        raise SweepError(f"--executor {executor} needs submitit: pip install 'ldl[slurm]'") from None
    cluster = CLUSTERS[executor]
    if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise SweepError("--executor slurm needs SLURM's sbatch and srun (a cluster's login node); "
                         "--executor submitit-local runs the same jobs on this machine")
    out_dir = out_dir.resolve()  # the jobs may start elsewhere
    out_dir.mkdir(parents=True, exist_ok=True)
    status = _read_status(out_dir)
    (out_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    runs = expand(spec, seed)
    queue = slurm_states(list(_slurm_jobs(status, runs).values())) if cluster == "slurm" else {}

    def write() -> None:
        (out_dir / STATUS_FILE).write_text(json.dumps(status, indent=1))

    jobs = {}
    for run in runs:
        run_dir, record = out_dir / run.run_id, {"overrides": run.overrides}
        owner, job_id = live_owner(run_dir), status.get(run.run_id, {}).get("job_id")
        if (run_dir / "summary.json").is_file():
            status[run.run_id] = {**record, "state": "finished"}
        elif owner is not None:
            status[run.run_id] = {**record, "state": RUNNING_ELSEWHERE, "owner": str(owner)}
        elif queue.get(job_id) in ALIVE_STATES:  # submitted earlier, still in SLURM's queue: left to it
            status[run.run_id] = {**record, "state": "submitted", "executor": executor, "job_id": job_id}
        else:
            (run_dir / ERROR_FILE).unlink(missing_ok=True)
            job = _executor(cluster, out_dir / LOG_DIR / run.run_id, options, run.run_id).submit(
                RunJob(spec, run, run_dir))
            status[run.run_id] = {**record, "state": "submitted", "executor": executor, "job_id": job.job_id}
            jobs[job] = run
    write()
    if progress and jobs:
        print(f"{len(jobs)} jobs submitted ({executor}), logs under {out_dir / LOG_DIR}; "
              f"`ldl sweep FILE --status` shows where each run is", flush=True)
    with tqdm(total=len(jobs), desc="jobs", unit="job", disable=not progress) as bar:
        for job in submitit.helpers.as_completed(list(jobs), poll_frequency=60 if cluster == "slurm" else 0.5):
            run = jobs[job]
            status[run.run_id] = _ended(out_dir / run.run_id, _log_file(out_dir, run.run_id), status[run.run_id],
                                        job.state)
            write()
            bar.update(1)
    return status


@dataclass
class RunState:
    run_id: str
    state: str  # pending | running | finished | failed
    detail: str
    log: Path | None
    tail: list[str]


def _progress(run_dir: Path) -> str:
    metrics, config = run_dir / "metrics.jsonl", run_dir / "config.yaml"
    if not metrics.is_file() or not config.is_file():
        return ""
    total = (yaml.safe_load(config.read_text()) or {}).get("optim", {}).get("epochs", "?")
    return f"epoch {len(metrics.read_text().splitlines())}/{total}"


def sweep_status(spec: dict, out_dir: Path, seed: int = 0, lines: int = 5) -> list[RunState]:
    """Every run of the sweep, from its folder: finished (summary.json), running (a live process
    holds its lock), failed (error.txt, or a SLURM job that ended without a result; with the last
    `lines` lines of its log), else pending (not started, in SLURM's queue, or stopped between
    checkpoints: its saved epochs)."""
    recorded = _read_status(out_dir)
    runs = expand(spec, seed)
    jobs = _slurm_jobs(recorded, runs)
    sacct = slurm_states(list(jobs.values()))
    states = []
    for run in runs:
        run_dir, log = out_dir / run.run_id, _log_file(out_dir, run.run_id)
        job = jobs.get(run.run_id)
        slurm = f"SLURM job {job} {sacct.get(job, '')}".strip() if job else ""
        progress, owner = _progress(run_dir), live_owner(run_dir)
        if (run_dir / "summary.json").is_file():
            test = json.loads((run_dir / "summary.json").read_text())["final"].get("test", {})
            detail = f"test accuracy {test['accuracy']:.4f}" if "accuracy" in test else ""
            states.append(RunState(run.run_id, "finished", detail, log, []))
        elif owner is not None:
            states.append(RunState(run.run_id, "running", ", ".join(filter(None, [progress, str(owner)])), log, []))
        elif sacct.get(job) not in ALIVE_STATES and ((run_dir / ERROR_FILE).is_file() or job in sacct):
            tail = _tail(log, lines) or _tail(run_dir / ERROR_FILE, lines)
            states.append(RunState(run.run_id, "failed", ", ".join(filter(None, [progress, slurm])), log, tail))
        else:  # not started, in SLURM's queue, or stopped between checkpoints
            saved = f"{progress} saved" if progress else ""
            states.append(RunState(run.run_id, "pending", ", ".join(filter(None, [saved, slurm])), log, []))
    return states
