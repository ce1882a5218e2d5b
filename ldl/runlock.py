"""One live process per run folder: `<run_dir>/.lock` names the owner (PID, host, start time).

The lock file is created with O_CREAT|O_EXCL and removed on release.  A lock whose process is
gone (no such PID on this host, a zombie, or a PID reused by a later process: its start time
differs) is stale and is taken over with a warning.  So is the lock of an earlier run of the
same SLURM job (requeued after preemption or a node failure: a higher SLURM_RESTART_COUNT), even
from another node: SLURM runs one incarnation of a job at a time.  Checking and taking happen
under a short flock on the folder, so two processes can never both take over one stale lock, and
a reader never sees a lock file before its owner is written.  A lock from another host whose
SLURM job has ended, as sacct reports (killed for memory, cancelled, a lost node), is stale too:
a rerun of the sweep resubmits that run and its new job takes the folder over.  Any other lock
from another host cannot be checked and counts as live.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"


class RunFolderError(ValueError):
    """The run folder cannot be used: unwritable, or owned by another live process."""


class RunLockedError(RunFolderError):
    """Another live process owns the run folder."""


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    started: str | None  # the process's start time in clock ticks since boot (Linux), else None
    slurm_job: str | None = None  # SLURM_JOB_ID and SLURM_RESTART_COUNT of a process in a SLURM job
    slurm_restart: int = 0

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host}" + (f" (SLURM job {self.slurm_job})" if self.slurm_job else "")


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def current_owner() -> Owner:
    stat = _proc_stat(os.getpid())
    return Owner(os.getpid(), socket.gethostname(), stat[19] if stat else None,
                 os.environ.get("SLURM_JOB_ID"), int(os.environ.get("SLURM_RESTART_COUNT", 0)))


# sacct's states of a job that is still queued or running; every other state has ended
ALIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                          "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT",
                          "PREEMPTED"})  # on its way back to the queue, as submitit counts it


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """sacct's state of each job ('CANCELLED by 42' -> CANCELLED); {} where sacct is missing or
    does not answer."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {job: state.split()[0] for job, _, state in (line.partition("|") for line in out.splitlines()) if state}


def slurm_job_ended(job_id: str) -> bool:
    """Whether sacct knows the job and reports a final state; False when it cannot tell."""
    state = slurm_states([job_id]).get(job_id)
    return state is not None and state not in ALIVE_STATES


def is_alive(owner: Owner) -> bool:
    if owner.slurm_job is not None and owner.slurm_job == os.environ.get("SLURM_JOB_ID") \
            and owner.slurm_restart < int(os.environ.get("SLURM_RESTART_COUNT", 0)):
        return False  # an earlier incarnation of this (requeued) job
    if owner.host != socket.gethostname():  # another machine's process cannot be checked from here,
        return owner.slurm_job is None or not slurm_job_ended(owner.slurm_job)   # but SLURM knows its job
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(owner.pid)
    if stat is None:
        return True
    return stat[0] != "Z" and (owner.started is None or stat[19] == owner.started)


def read_owner(run_dir: Path) -> Owner | None:
    """The owner named by the folder's lock file; None without a lock, or with a garbled one
    (left by a process that died between creating and writing it)."""
    try:
        return Owner(**json.loads((Path(run_dir) / LOCK_NAME).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def live_owner(run_dir: Path) -> Owner | None:
    """The live process that owns the run folder, if any."""
    owner = read_owner(run_dir)
    return owner if owner is not None and is_alive(owner) else None


@contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
    """Serialise lock checks and changes among processes on this folder (released on close,
    also when the process dies)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class RunLock:
    """Ownership of a run folder (created if needed) from `acquire()` to `release()`."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.owner = current_owner()
        self.created_dir = False

    def acquire(self) -> None:
        try:
            self.created_dir = not self.dir.exists()
            self.dir.mkdir(parents=True, exist_ok=True)
            with _exclusive(self.dir):
                self._take()
        except OSError as err:
            raise RunFolderError(f"cannot write the run folder {self.dir}: {err.strerror or err}") from None

    def _take(self) -> None:
        if self.path.exists():
            holder = read_owner(self.dir)
            if holder is not None and is_alive(holder):
                raise RunLockedError(f"{self.dir} is in use by {holder} (lock file {self.path}); "
                                     "wait for that run to end or stop it")
            warnings.warn(f"{self.dir}: taking over a stale lock ({holder or 'unreadable'}, no longer running)")
            self.path.unlink()
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self.owner), f)

    def release(self) -> None:
        """Remove the lock if it is still ours, and the folder if this lock created it and
        nothing else was written there (a run refused before its first record)."""
        if not self.dir.is_dir():  # removed while the run held it
            return
        with _exclusive(self.dir):
            if read_owner(self.dir) == self.owner:
                self.path.unlink()
        if self.created_dir and not any(self.dir.iterdir()):
            self.dir.rmdir()
