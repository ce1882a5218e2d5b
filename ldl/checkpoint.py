"""Atomic checkpoints: written to a temporary file, flushed to disk, then renamed over the old
one, so a crash mid-write never leaves a broken latest checkpoint.

Every file the project loads with torch (checkpoints, `model.pretrained` weights, the VA
regressor, the teacher) goes through `load_file`: `weights_only=True`, so unpickling can build
tensors and plain data only and a file passed around between researchers can never run code.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_atomic(state: dict[str, Any], path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class CheckpointError(ValueError):
    """A file that cannot be loaded safely: refused (it holds more than tensors and plain data),
    empty, truncated, or not what it was passed as."""


# What our checkpoints hold beyond tensors and plain data: numpy's RNG state (a uint32 array).
NUMPY_RNG_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]
_REFUSED = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def load_file(path: Path, what: str, device: str | torch.device = "cpu", keys: tuple[str, ...] = ()) -> Any:
    """torch.load restricted to tensors, plain data and NUMPY_RNG_GLOBALS; a dict must hold `keys`.
    Any other content is a CheckpointError naming the file, raised before anything in it runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(NUMPY_RNG_GLOBALS):
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED.search(str(err))
        if not refused:
            raise CheckpointError(_unreadable(path, what, err)) from None
        raise CheckpointError(f"{path}: refused to load this {what}: it holds {refused[1] or refused[2]}, which is "
                              "neither a tensor nor plain data (loading it could run code from the file)") from None
    except (EOFError, RuntimeError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(_unreadable(path, what, err)) from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an ldl {what}: it lacks {', '.join(repr(k) for k in missing)}")
    return state


def _unreadable(path: Path, what: str, err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch wraps the cause in advice (retry with weights_only=False) that must not be followed
    cause = next((line for line in lines if not line.startswith(("Weights only", "Please file", "Check the"))), "")
    cause = cause.split(". ")[0].removeprefix("WeightsUnpickler error:").strip()
    return (f"{path}: not a readable {what} (empty, truncated or not written by torch.save): "
            f"{type(err).__name__}{': ' + cause if cause else ''}")


def load(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    return load_file(path, "checkpoint", device, keys=("config", "model"))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
