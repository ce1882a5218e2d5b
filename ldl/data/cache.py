"""Packed uint8 image cache: decode and resize once, memory-map on every later run.

A cache entry is a folder named by a hash of everything that determines its contents (the
dataset, split, the source files' sizes and mtimes, image size, protocol, generator seed), so it
is reused across runs and rebuilt when the source or the preprocessing changes.  Entries are
written to a temporary folder and renamed into place: an interrupted build leaves no entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Callable

import numpy as np

from ldl.data.dataset import FERData

ImageAllocator = Callable[[int, int, int], np.ndarray]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LDL_CACHE", Path.home() / ".cache" / "ldl"))


def fingerprint_files(paths: list[Path]) -> str:
    """Cheap identity of source files: names, sizes and modification times."""
    h = hashlib.sha1()
    for p in sorted(paths):
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _entry_name(key: dict) -> str:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{key.get('dataset', 'data')}-{key.get('split', 'all')}-{digest}"


def load_or_build(key: dict, build: Callable[[ImageAllocator], FERData], cache_dir: Path | None = None) -> FERData:
    """Return the cached split for `key`, building it with `build(alloc)` on a miss.

    `build` receives `alloc(n, h, w)`, which returns a writable uint8 memory map [n, h, w, 3]
    inside the entry being written, so large datasets never need to fit in RAM.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / _entry_name(key)
    if (folder / "meta.json").is_file():
        return _load(folder)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        def alloc(n: int, h: int, w: int) -> np.ndarray:
            return np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))

        data = build(alloc)
        if not isinstance(data.images, np.memmap):
            alloc(*data.images.shape[:3])[:] = data.images
        _save_arrays(data, tmp, key)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(folder)


def _save_arrays(data: FERData, folder: Path, key: dict) -> None:
    arrays = {f.name: getattr(data, f.name) for f in fields(data)
              if isinstance(getattr(data, f.name), np.ndarray) and f.name != "images"}
    if isinstance(data.images, np.memmap):
        data.images.flush()
    np.savez(folder / "arrays.npz", **arrays)
    meta = {"key": key, "num_classes": data.num_classes, "info": data.info, "count": len(data),
            "image_shape": list(data.images.shape[1:])}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def _load(folder: Path) -> FERData:
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    images = np.load(folder / "images.npy", mmap_mode="r")
    return FERData(images=images, num_classes=meta["num_classes"], info=meta["info"], **arrays)
