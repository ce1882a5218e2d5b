"""`ldl sweep FILE`: the wandb sweep YAML format, run by a local executor or by wandb agents.

A sweep file is a wandb sweep configuration whose command calls `ldl train` with
`${args_no_hyphens}`, so each parameter arrives as a dotted override (key=value):

    method: grid                     # grid | random
    command: [ldl, train, -c, experiments/synthetic/quickstart.yaml, "${args_no_hyphens}"]
    metric: {name: final.test.accuracy, goal: maximize}
    run_cap: 20                      # random sweeps: how many runs
    parameters:
      method.name: {values: [ce, ldlva]}
      optim.lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}

Offline (the default) the local executor expands the sweep, runs N runs at a time (one per
GPU, else CPU processes sharing the cores), skips runs that already finished, resumes runs that
were interrupted, records a failed run's error and goes on.  With --executor slurm each run is a
SLURM job of its own (ldl/executors.py; the file may hold a `slurm:` block of job resources).  With
--wandb the same file is registered as a real wandb sweep for agents on many machines (needs a
wandb server and key).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ldl.lifeline import child_env
from ldl.runlock import live_owner

SWEEP_METHODS = ("grid", "random")
ARGS_TOKEN = "${args_no_hyphens}"
RUNNING_ELSEWHERE = "running elsewhere"
STATUS_FILE = "sweep_status.json"   # the sweep folder's record of every run, whichever executor ran it
ERROR_FILE = "error.txt"            # a failed run's last output, in its run folder
ERROR_CHARS = 2000
STOP_GRACE_S = 10.0  # a stopped child's time to save and release its run folder before SIGKILL


class SweepError(ValueError):
    pass


@dataclass
class SweepRun:
    run_id: str
    overrides: list[str]


def load_sweep(path: Path) -> dict:
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    if spec.get("method") not in SWEEP_METHODS:
        raise SweepError(f"{path}: 'method' must be one of {SWEEP_METHODS} (bayes needs a wandb server)")
    if not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise SweepError(f"{path}: 'parameters' must map parameter names to value specs")
    command = spec.get("command", ["ldl", "train", ARGS_TOKEN])
    if command[:2] != ["ldl", "train"] or ARGS_TOKEN not in command:
        raise SweepError(f"{path}: 'command' must be [ldl, train, ..., \"{ARGS_TOKEN}\"]")
    spec["command"] = command
    return spec


def _sample(name: str, p: dict, rng: np.random.Generator) -> Any:
    if "value" in p:
        return p["value"]
    if "values" in p:
        values = p["values"]
        return values[rng.choice(len(values), p=p.get("probabilities"))]
    kind = p.get("distribution", "uniform" if "min" in p and isinstance(p["min"], float) else "int_uniform")
    if kind == "uniform":
        return float(rng.uniform(p["min"], p["max"]))
    if kind == "int_uniform":
        return int(rng.integers(p["min"], p["max"] + 1))
    if kind == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(p["min"]), math.log(p["max"]))))
    if kind == "log_uniform":  # wandb: min/max are natural-log exponents
        return float(math.exp(rng.uniform(p["min"], p["max"])))
    if kind == "normal":
        return float(rng.normal(p.get("mu", 0.0), p.get("sigma", 1.0)))
    if kind == "q_uniform":
        q = p.get("q", 1.0)
        return float(round(rng.uniform(p["min"], p["max"]) / q) * q)
    raise SweepError(f"parameter '{name}': unsupported distribution {kind!r}")


def _override(name: str, value: Any) -> str:
    return f"{name}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


def _label(value: Any) -> str:
    """A value as it appears in a run folder's name; a mapping (several keys set together, e.g.
    data.noise: {type: instance, rate: 0.2}) by its values, a list ([0.9, 0.1]) by its items."""
    if isinstance(value, dict):
        return "_".join(_label(v) for v in value.values()) or "default"   # {}: the config's own
    if isinstance(value, list):   # no brackets, quotes or spaces in folder names
        return "_".join(_label(v) for v in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def expand(spec: dict, seed: int = 0) -> list[SweepRun]:
    """All runs of a grid sweep (cartesian product of `values`), or `run_cap` seeded draws."""
    params = spec["parameters"]
    if spec["method"] == "grid":
        names = list(params)
        for name in names:
            if "value" not in params[name] and "values" not in params[name]:
                raise SweepError(f"grid sweep: parameter '{name}' needs 'value' or 'values'")
        choices = [[params[n]["value"]] if "value" in params[n] else params[n]["values"] for n in names]
        combos = [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    else:
        if "run_cap" not in spec:
            raise SweepError("random sweep: set run_cap (the number of runs)")
        rng = np.random.default_rng(seed)
        combos = [{n: _sample(n, p, rng) for n, p in params.items()} for _ in range(int(spec["run_cap"]))]
    runs = []
    for combo in combos:
        overrides = [_override(n, v) for n, v in combo.items()]
        run_id = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:10]
        label = "-".join(_label(v).replace("/", "_") for v in combo.values())[:80]
        runs.append(SweepRun(f"{label}-{run_id}", overrides))
    return runs


def train_args(spec: dict, run: SweepRun, run_dir: Path) -> list[str]:
    """The run's `ldl train` arguments: --resume when the folder holds a checkpoint (the caller has
    checked that no live process owns it), else the sweep's command with the run's overrides."""
    if (run_dir / "checkpoint.pt").is_file():
        return ["--resume", str(run_dir)]
    args = []
    for part in spec["command"][2:]:
        args.extend(run.overrides if part == ARGS_TOKEN else [part])
    return args + [f"run.dir={run_dir}", "log.progress=false"]


class Children:
    """The sweep's running children.  Each leads its own process group (start_new_session), so
    a signal reaches the child and whatever it started, and a Ctrl-C at the terminal reaches
    the sweep only, which decides what the children get."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.RLock()  # re-entered by a signal handler that interrupts signal()
        self.stopping = threading.Event()
        self.signalled = False

    def run(self, command: list[str], **popen_args: Any) -> int | None:
        """The child's exit code; None if the sweep is stopping and it was not started."""
        with self._lock:
            if self.stopping.is_set():
                return None
            proc = subprocess.Popen(command, start_new_session=True, **popen_args)
            self._running.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._running.discard(proc)

    def signal(self, signum: int) -> None:
        with self._lock:
            self.signalled = True
            for proc in self._running:
                if proc.poll() is None:  # never signal a reaped (reusable) process id
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signum)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Start no more children; SIGTERM the running ones unless a signal was forwarded to
        them already (a second one could cut short their cleanup), SIGKILL what is left after
        `grace_s`."""
        self.stopping.set()
        if not self.signalled:
            self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        self.signal(signal.SIGKILL)


@contextlib.contextmanager
def _forwarding_signals(children: Children) -> Iterator[None]:
    """SIGINT and SIGTERM go to every child's group and end the sweep (KeyboardInterrupt /
    SystemExit), which then stops the children.  Signal handlers belong to the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: object) -> None:
        children.stopping.set()
        children.signal(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_local(spec: dict, out_dir: Path, workers: int | None = None, seed: int = 0,
              extra_overrides: tuple[str, ...] = (), progress: bool = True) -> dict:
    """Run every sweep run not yet finished; returns {run_id: status}.  A run whose folder is
    owned by a live process (another sweep, a manual `ldl train --resume`) is left to it and
    marked "running elsewhere".  The children end with the sweep: on SIGINT/SIGTERM, on an
    error, and (through their own watch) when the sweep is killed."""
    runs = expand(spec, seed)
    for run in runs:
        run.overrides = run.overrides + list(extra_overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    workers = workers or max(1, gpus or 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    status_path = out_dir / STATUS_FILE
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    (out_dir / "sweep.yaml").write_text(yaml.safe_dump(spec))
    todo = [r for r in runs if not (out_dir / r.run_id / "summary.json").is_file()]
    for r in runs:
        if r not in todo:
            status[r.run_id] = {"state": "finished", "overrides": r.overrides}

    children = Children()

    def launch(slot: int, run: SweepRun) -> tuple[SweepRun, dict]:
        if children.stopping.is_set():   # queued when the sweep was stopped: never started
            return run, {"state": "interrupted", "overrides": run.overrides}
        run_dir = out_dir / run.run_id
        owner = live_owner(run_dir)
        if owner is not None:
            return run, {"state": RUNNING_ELSEWHERE, "overrides": run.overrides, "owner": str(owner)}
        env = child_env({**os.environ, "OMP_NUM_THREADS": str(threads)})
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        start = time.perf_counter()
        log = out_dir / f"{run.run_id}.log"
        with open(log, "a") as f:   # a resumed run's log follows its earlier incarnations'
            start_offset = f.tell()
            code = children.run([sys.executable, "-m", "ldl.cli", "train", *train_args(spec, run, run_dir)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
        if code is None or (code != 0 and children.stopping.is_set()):
            return run, {"state": "interrupted", "overrides": run.overrides}
        if code == 0:
            return run, {"state": "finished", "overrides": run.overrides,
                         "seconds": round(time.perf_counter() - start, 1)}
        tail = log.read_text()[start_offset:][-ERROR_CHARS:]
        run_dir.mkdir(exist_ok=True)
        (run_dir / ERROR_FILE).write_text(tail)
        return run, {"state": "failed", "overrides": run.overrides, "exit_code": code, "error": tail}

    with _forwarding_signals(children), ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", disable=not progress) as bar:
        try:
            futures = [pool.submit(launch, i, run) for i, run in enumerate(todo)]
            for future in as_completed(futures):
                run, status[run.run_id] = future.result()
                status_path.write_text(json.dumps(status, indent=1))
                bar.update(1)
                bar.set_postfix(failed=sum(s["state"] == "failed" for s in status.values()))
        finally:  # normal end: nothing is running; signal or error: the children go too
            children.stop()
            pool.shutdown(cancel_futures=True)   # runs still queued are not started
    status_path.write_text(json.dumps(status, indent=1))
    return status


def register_with_wandb(spec: dict, project: str) -> str:
    """Create a real wandb sweep from the same file; agents on many machines then run
    `wandb agent <entity>/<project>/<id>`, each calling `ldl train key=value ...`."""
    import wandb

    return wandb.sweep(sweep={k: v for k, v in spec.items() if k != "slurm"}, project=project)  # ours, not wandb's
