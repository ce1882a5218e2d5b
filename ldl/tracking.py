"""Run records: resolved config, provenance, per-epoch JSONL, final summary; wandb optional.

wandb is real: offline by default (files under the run folder, `wandb sync` uploads them),
`log.wandb=online` to stream, `disabled` to skip it.  JSONL is always written.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ldl.config import flatten, to_yaml

PACKAGES = ("torch", "numpy", "scipy", "faiss-cpu", "faiss-gpu", "wandb", "omegaconf", "pyyaml", "tqdm", "rich", "matplotlib")


def git_commit() -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1))
    os.replace(tmp, path)


class RunRecorder:
    """Owns a run folder.  Only rank 0 writes."""

    def __init__(self, run_dir: Path, cfg: DictConfig, resume: bool = False, active: bool = True):
        self.dir, self.cfg, self.active = Path(run_dir), cfg, active
        self.metrics_path = self.dir / "metrics.jsonl"
        self.wandb_run = None
        if not active:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.dir / "meta.json"
        meta = json.loads(meta_path.read_text()) if resume and meta_path.is_file() else {}
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        meta.update(seed=int(cfg.seed), git=git_commit(), packages=package_versions(), machine=machine(),
                    command=sys.argv)
        meta.setdefault("resumed_at", [])
        if resume:
            meta["resumed_at"].append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        (self.dir / "config.yaml").write_text(to_yaml(cfg))
        self.meta = meta
        self._start_wandb(resume)
        write_json(meta_path, self.meta)

    def _start_wandb(self, resume: bool) -> None:
        mode = self.cfg.log.wandb
        if mode == "disabled":
            return
        if mode not in ("offline", "online"):
            raise ValueError(f"log.wandb must be offline, online or disabled, got {mode!r}")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run_id = self.meta.get("wandb_id") or uuid.uuid4().hex[:8]
        self.meta["wandb_id"] = run_id
        self.wandb_run = wandb.init(
            project=self.cfg.log.project, name=self.dir.name, id=run_id, resume="allow" if resume else None,
            dir=str(self.dir), mode=mode, config=OmegaConf.to_container(self.cfg, resolve=True),
            # wandb's local service can take minutes to start on a loaded machine (101 s seen on
            # 2 busy cores, past the 90 s default): a slow start must not end the training run.
            settings=wandb.Settings(console="off", x_disable_stats=True, init_timeout=600, x_service_wait=600),
        )

    def rewrite_history(self, history: list[dict]) -> None:
        """On resume, make metrics.jsonl hold exactly the epochs the checkpoint has."""
        if self.active:
            self.metrics_path.write_text("".join(json.dumps(_jsonable(r)) + "\n" for r in history))

    def log_epoch(self, record: dict) -> None:
        if not self.active:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
        if self.wandb_run is not None:
            flat = {k: v for k, v in flatten(record, sep="/").items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.wandb_run.log(flat, step=int(record["epoch"]))

    def finish(self, summary: dict) -> None:
        if not self.active:
            return
        write_json(self.dir / "summary.json", summary)
        if self.wandb_run is not None:
            for key, value in flatten(summary, sep="/").items():
                if isinstance(value, (int, float, str)):
                    self.wandb_run.summary[key] = value
            self.wandb_run.finish()
            self.wandb_run = None


