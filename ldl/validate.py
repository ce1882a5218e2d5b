"""Settings checked before any expensive work: each bad one is a one-line ConfigError naming the
setting and the value, so `ldl` stops with exit code 2 instead of a traceback mid-run (or an
untrained run that looks finished)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldl.config import ConfigError
from ldl.data.cache import default_cache_dir
from ldl.data.dataset import FERData

SPLITS = ("train", "val", "test")
CLASS_COUNTS = (7, 8)  # the FER protocols: AffectNet's 8 classes, or 7 without Contempt
# Settings that decide the shapes of a checkpoint's model and method state.
CHECKPOINT_SHAPE_KEYS = ("model.arch", "model.width", "model.stem", "model.input_size", "model.neck",
                         "method.name", "data.num_classes")


def validate(cfg: DictConfig) -> None:
    """Everything a training run needs that can be checked before its data is built."""
    validate_data(cfg)
    for key in ("optim.epochs", "optim.batch_size", "optim.eval_batch_size", "eval.every"):
        value = OmegaConf.select(cfg, key)
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    unknown = [split for split in cfg.eval.splits if split not in SPLITS]
    if unknown:
        raise ConfigError(f"eval.splits: unknown split {unknown[0]!r} (known: {', '.join(SPLITS)})")


def validate_data(cfg: DictConfig) -> None:
    """What building a dataset needs: a protocol's class count and a writable cache."""
    if cfg.data.num_classes not in CLASS_COUNTS:
        raise ConfigError(f"data.num_classes must be 7 or 8 (8: AffectNet's classes, 7: without Contempt), "
                          f"got {cfg.data.num_classes}")
    ensure_writable(Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(),
                    "data cache folder (data.cache_dir or $LDL_CACHE)")


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and write a probe file into it: permission bits alone do not
    tell (root ignores them; read-only and kernel filesystems refuse anyway)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".ldl-write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write the {what} {folder}: {err.strerror or err}") from None


def check_steps(batch_size: int, num_train: int, world_size: int = 1) -> None:
    """At least one training step per epoch: the last incomplete batch is dropped."""
    per_rank_samples, per_rank_batch = num_train // world_size, batch_size // world_size
    if per_rank_batch == 0 or per_rank_samples // per_rank_batch == 0:
        ranks = f" over {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"optim.batch_size={batch_size} is larger than the training set ({num_train} samples)"
                          f"{ranks}: no training step per epoch (the last incomplete batch is dropped); "
                          "lower optim.batch_size")


def check_splits(cfg: DictConfig, splits: dict[str, FERData]) -> None:
    """The dataset as built must match data.num_classes: the model's head has that many outputs."""
    expected = cfg.data.num_classes
    for split, data in splits.items():
        top = int(data.labels.max()) if len(data) else -1
        if data.num_classes != expected or top >= expected:
            raise ConfigError(f"data.num_classes={expected} but the {cfg.data.name} {split} split has "
                              f"{data.num_classes} classes (labels up to {top})")


def check_checkpoint_fits(path: Path, saved: DictConfig, cfg: DictConfig) -> None:
    """Overrides may change the data and evaluation, never the shapes of the saved state."""
    for key in CHECKPOINT_SHAPE_KEYS:
        trained, asked = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if trained != asked:
            raise ConfigError(f"{key}={asked} contradicts the checkpoint {path}, trained with {key}={trained}; "
                              f"evaluate it with the {key.split('.')[0]} it was trained with")
