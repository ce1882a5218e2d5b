"""What every real-format loader shares: the bad-input policy, image decoding into the packed
cache, the 7/8-class protocol, and the validation hold-out for datasets without one."""
from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm.auto import tqdm

from ldl.data.cache import EntryWriter, fingerprint_files, load_or_build
from ldl.data.dataset import FERData
from ldl.data.labels import CLASSES, CONTEMPT


class DataError(ValueError):
    """Bad input, named by file and line."""


@dataclass
class ErrorPolicy:
    """`raise`: the first bad input stops the run with its file and line.  `skip`: bad inputs
    are dropped, counted by reason, and the first examples kept for the run log."""
    mode: str = "raise"
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.mode!r}")

    def bad(self, where: str, reason: str, detail: str = "") -> None:
        message = f"{where}: {reason}{': ' + detail if detail else ''}"
        if self.mode == "raise":
            raise DataError(message + "  (set data.on_error=skip to skip and count such inputs)")
        self.counts[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(message)

    def report(self) -> dict | None:
        if not self.counts:
            return None
        return {"total": sum(self.counts.values()), "by_reason": dict(self.counts), "examples": self.examples}


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")
    return path


def data_root(cfg: DictConfig) -> Path:
    if not cfg.data.root:
        raise DataError(f"data.root must point at the {cfg.data.name} folder (data.root=/path/to/it)")
    return require_dir(Path(cfg.data.root).expanduser(), f"{cfg.data.name} data.root")


def _decode(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # forces a full decode: truncated files fail here
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def decode_into(entry: EntryWriter, paths: Sequence[Path], size: int, policy: ErrorPolicy,
                desc: str, progress: bool = True, crop_boxes: Sequence | None = None,
                origins: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode, (crop,) resize and write images into the cache; returns (images, kept mask).

    The cache entry depends on every path (a later change rebuilds it).  Unreadable or
    truncated files go through `policy`, named by `origins[i]` (the label file and line that
    listed the image) when given.  Decoding runs on a thread pool (PIL releases the GIL)."""
    entry.depends_on(paths)
    images = entry(len(paths), size, size)
    kept = np.ones(len(paths), dtype=bool)

    def work(i: int) -> tuple[int, np.ndarray | None, str, str]:
        try:
            if crop_boxes is not None and crop_boxes[i] is not None:
                with Image.open(paths[i]) as img:
                    img.load()
                    x, y, w, h = crop_boxes[i]
                    arr = img.convert("RGB").crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
                    return i, np.asarray(arr, dtype=np.uint8), "", ""
            return i, _decode(paths[i], size), "", ""
        except FileNotFoundError:
            return i, None, "missing image", ""
        except (OSError, SyntaxError, ValueError) as err:
            return i, None, "unreadable image", str(err)

    with ThreadPoolExecutor(max_workers=4) as pool, tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for i, arr, reason, error in pool.map(work, range(len(paths)), chunksize=64):
            if arr is None:
                if origins is None:
                    policy.bad(str(paths[i]), reason, error)
                else:
                    policy.bad(origins[i], reason, f"{paths[i]}{f' ({error})' if error else ''}")
                kept[i] = False
            else:
                images[i] = arr
            bar.update(1)
    if not kept.all():  # compact: rewrite the cache's image file without the skipped rows
        good = np.asarray(images[kept])
        images = entry(len(good), size, size)
        images[:] = good
    return images, kept


def apply_protocol(data: FERData, num_classes: int, source: str, policy: ErrorPolicy | None = None) -> FERData:
    """8 classes: keep as is.  7 classes: drop Contempt samples and renormalise distributions."""
    if num_classes == 8:
        return replace(data, num_classes=8)
    keep = data.labels != CONTEMPT
    out = data.select(np.flatnonzero(keep))
    for name in ("dist", "soft"):
        value = getattr(out, name)
        if value is not None:
            value = value[:, :7].astype(np.float32)
            total = value.sum(1, keepdims=True)
            value = np.divide(value, total, out=np.full_like(value, 1 / 7), where=total > 0)
            setattr(out, name, value)
    out.num_classes = 7
    out.info["dropped_by_protocol"] = out.info.get("dropped_by_protocol", 0) + int((~keep).sum())
    return out


def check_classes(data: FERData, source: str) -> None:
    """Every class of the protocol must have training samples."""
    counts = np.bincount(data.labels, minlength=data.num_classes)
    absent = [CLASSES[c] for c in range(data.num_classes) if counts[c] == 0]
    if absent:
        hint = " (this dataset has no Contempt: use data.num_classes=7)" if absent == ["Contempt"] else ""
        raise DataError(f"{source}: no samples of class {', '.join(absent)}{hint}")


def holdout(data: FERData, fraction: float, seed: int, part: str) -> FERData:
    """A seeded, stratified validation split carved from a training split."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(data.labels):
        members = np.flatnonzero(data.labels == c)
        take = int(math.floor(fraction * len(members)))
        val.extend(rng.choice(members, size=take, replace=False).tolist())
    is_val = np.zeros(len(data), dtype=bool)
    is_val[val] = True
    out = data.select(np.flatnonzero(is_val if part == "val" else ~is_val))
    if part == "val":  # the inputs skipped while reading the train file are reported once, with train
        out.info.pop("skipped", None)
    return out


def cached_split(cfg: DictConfig, split: str, sources: list[Path], extra_key: dict,
                 build: Callable[[EntryWriter, ErrorPolicy], FERData]) -> FERData:
    """Build (or load) a dataset's full native split through the cache, with the error policy
    and protocol applied and the skipped-input report kept in `info`.  `sources` are the label
    files; the images each build decodes are re-checked on every load (data.cache_verify)."""
    verify = cfg.data.cache_verify
    key = {"dataset": cfg.data.name, "split": split, "size": cfg.data.image_size, "on_error": cfg.data.on_error,
           "sources": fingerprint_files(sources, verify), "verify": verify, "num_classes": cfg.data.num_classes,
           **extra_key, "version": 3}   # 3: entries carry group attributes

    def make(entry: EntryWriter) -> FERData:
        policy = ErrorPolicy(cfg.data.on_error)
        data = build(entry, policy)
        if policy.report():
            data.info["skipped"] = policy.report()
        data = apply_protocol(data, cfg.data.num_classes, f"{cfg.data.name} {split}")
        if len(data) == 0:
            raise DataError(f"{cfg.data.name}: the {split} split is empty")
        return data

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    return load_or_build(key, make, cache_dir, verify)


def train_val_test(cfg: DictConfig, split: str, native: Callable[[str], FERData], has_val: bool = False) -> FERData:
    """Map the framework's splits onto a dataset's native ones.  Without a native validation
    split, `val` is a stratified `data.val_fraction` of train, drawn with a fixed seed so that
    every run of a study holds out the same images."""
    if split == "test" or (split == "val" and has_val):
        data = native(split)
    else:
        full = native("train")
        data = full if has_val else holdout(full, cfg.data.val_fraction, 0, split)
    if split == "train":
        check_classes(data, f"{cfg.data.name} train")
    return data


def read_va_file(path: Path, data: FERData) -> FERData:
    """Attach (pseudo-)VA from a CSV `name,valence,arousal`, as written by `ldl va annotate`."""
    require_file(path, "data.va_file")
    table: dict[str, tuple[float, float]] = {}
    with open(path) as f:
        header = f.readline().strip().split(",")
        if header[:3] != ["name", "valence", "arousal"]:
            raise DataError(f"{path}:1: expected header 'name,valence,arousal', got {header}")
        for line_no, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split(",")
            try:
                v, a = float(parts[1]), float(parts[2])
            except (IndexError, ValueError):
                raise DataError(f"{path}:{line_no}: malformed line {line.strip()!r}") from None
            if not (math.isfinite(v) and math.isfinite(a)) or abs(v) > 1 or abs(a) > 1:
                raise DataError(f"{path}:{line_no}: valence/arousal must be finite and within [-1, 1], got {v}, {a}")
            table[parts[0]] = (v, a)
    missing = [str(n) for n in data.names if str(n) not in table]
    if missing:
        raise DataError(f"{path}: no VA for {len(missing)} samples, e.g. {missing[:3]}")
    va = np.array([table[str(n)] for n in data.names], dtype=np.float32)
    return replace(data, va=va)
