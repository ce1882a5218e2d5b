"""Where the processes of one multi-process run find each other.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT itself.  Under SLURM
(`srun ldl train ...`, one task per GPU) the same facts come from SLURM's variables, and in a
submitit job from submitit's JobEnvironment (SLURM's variables on a cluster, submitit's own on one
machine).  Both become torchrun's variables, so `init_distributed` has a single path.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

PORT_BASE, PORT_SPAN = 15000, 15000  # below Linux's ephemeral ports (32768 and up)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    flat = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], nodelist.strip())
    return flat.split(",")[0]


def port_for(job_id: str, step_id: str = "") -> str:
    """A port per job id and step, so that two jobs sharing a node, or two srun steps of one job
    (runs packed into one allocation), do not take the same one."""
    digits = re.sub(r"\D", "", job_id) or "0"
    step = int(re.sub(r"\D", "", step_id) or "0")
    return str(PORT_BASE + (int(digits) * 101 + step) % PORT_SPAN)


def _with_user_address(variables: dict[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT the user exported win over the derived ones."""
    return {**variables, **{k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT") if k in env}}


def from_slurm(env: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables for a task that srun started; {} for a single task (no process group)."""
    if "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", "1")) <= 1:
        return {}
    return _with_user_address({
        "RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        # the step's nodes: an srun on part of the allocation need not start on the job's first node
        "MASTER_ADDR": first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")),
        "MASTER_PORT": port_for(env.get("SLURM_JOB_ID", "0"), env.get("SLURM_STEP_ID", "")),
    }, env)


def from_submitit() -> dict[str, str]:
    """torchrun's variables inside a submitit job (any executor); {} for a single task."""
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks <= 1:
        return {}
    return _with_user_address({
        "RANK": str(job.global_rank), "WORLD_SIZE": str(job.num_tasks), "LOCAL_RANK": str(job.local_rank),
        "MASTER_ADDR": job.hostnames[0], "MASTER_PORT": port_for(job.job_id),
    }, os.environ)
