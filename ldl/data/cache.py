"""Packed uint8 image cache: decode and resize once, memory-map on every later run.

A cache entry is a folder named by a hash of everything that determines its contents (the
dataset, split, the label files' sizes and mtimes, image size, protocol, generator seed), so it
is reused across runs and rebuilt when the preprocessing changes.  The entry also lists every
image it was decoded from; each load re-checks their sizes and mtimes (with `verify="content"`
also their bytes), and a changed, added or removed image makes the entry stale, rebuilt in
place.  Entries are written to a temporary folder and renamed into place: an interrupted build
leaves no entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ldl.data.dataset import PER_SAMPLE_DICTS, FERData

VERIFY_MODES = ("stat", "content")
LANDMARKS_FILE = "landmarks.npy"   # predicted landmarks beside an entry's images (ldl/landmarks.py)
CACHE_ENTRY = "cache_entry"        # info key: the entry folder a split was loaded from
SEP = ":"                          # named per-sample arrays (FERData.groups ...) are stored as "<field>:<key>"


def default_cache_dir() -> Path:
    return Path(os.environ.get("LDL_CACHE", Path.home() / ".cache" / "ldl"))


def fingerprint_files(paths: Iterable[Path], verify: str = "stat") -> str:
    """Identity of source files: names, sizes and modification times, and with `verify="content"`
    a hash of their bytes.  A missing file is part of the identity, so its return changes it."""
    _check_verify(verify)
    return _digest({str(p): _identity(Path(p), verify) for p in paths})


def _check_verify(verify: str) -> None:
    if verify not in VERIFY_MODES:
        raise ValueError(f"data.cache_verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")


def _identity(path: Path, verify: str) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path}|missing\n".encode()
    line = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if verify == "content":
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        line += f"|{h.hexdigest()}"
    return f"{line}\n".encode()


def _digest(identities: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for path in sorted(identities):
        h.update(identities[path])
    return h.hexdigest()


class EntryWriter:
    """What a build writes into: `writer(n, h, w)` is a writable uint8 memory map [n, h, w, 3]
    inside the entry, and `writer.depends_on(paths)` records the source images to re-check on
    every load (identified before they are decoded, so an edit during the build is noticed)."""

    def __init__(self, folder: Path, verify: str):
        self.folder = folder
        self.verify = verify
        self.identities: dict[str, bytes] = {}

    def __call__(self, n: int, h: int, w: int) -> np.ndarray:
        return np.lib.format.open_memmap(self.folder / "images.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))

    def depends_on(self, paths: Iterable[Path]) -> None:
        self.identities.update((str(p), _identity(Path(p), self.verify)) for p in paths)


def _entry_name(key: dict) -> str:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{key.get('dataset', 'data')}-{key.get('split', 'all')}-{digest}"


def load_or_build(key: dict, build: Callable[[EntryWriter], FERData], cache_dir: Path | None = None,
                  verify: str = "stat") -> FERData:
    """Return the cached split for `key`, building it with `build(writer)` on a miss or when a
    source image recorded by `writer.depends_on` changed (checked as `fingerprint_files(verify)`).

    The writer's images live inside the entry being written, so large datasets never need to
    fit in RAM.
    """
    _check_verify(verify)
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / _entry_name(key)
    if (folder / "meta.json").is_file():
        if _is_fresh(folder, verify):
            return _load(folder)
        _discard(folder)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = EntryWriter(tmp, verify)
        data = build(writer)
        if not isinstance(data.images, np.memmap):
            writer(*data.images.shape[:3])[:] = data.images
        (tmp / "sources.json").write_text(json.dumps(sorted(writer.identities)))
        _save_arrays(data, tmp, key, {"verify": verify, "digest": _digest(writer.identities)})
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _load(folder)


def load_or_compute_arrays(key: dict, compute: Callable[[], dict[str, np.ndarray]],
                           cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Small arrays derived from a split (its feature statistics under a fixed backbone) cached
    beside the image entries as `<dataset>-<split>-<digest>.npz`, written atomically.  `key`
    must name everything they depend on, the split's content included: unlike an image entry,
    nothing is re-checked on load."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    path = root / f"{_entry_name(key)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = compute()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)   # a concurrent writer of the same key wrote the same arrays
    return arrays


def _is_fresh(folder: Path, verify: str) -> bool:
    recorded = json.loads((folder / "meta.json").read_text()).get("sources")
    if recorded is None or recorded["verify"] != verify:
        return False
    sources = json.loads((folder / "sources.json").read_text())
    return fingerprint_files(sources, verify) == recorded["digest"]


def _discard(folder: Path) -> None:
    """Move a stale entry out of the way first (atomic), so no process loads it while it goes."""
    doomed = folder.with_name(f".stale-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, doomed)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _save_arrays(data: FERData, folder: Path, key: dict, sources: dict) -> None:
    arrays = {f.name: getattr(data, f.name) for f in fields(data)
              if isinstance(getattr(data, f.name), np.ndarray) and f.name != "images"}
    for name in PER_SAMPLE_DICTS:
        arrays.update({f"{name}{SEP}{key}": column for key, column in getattr(data, name).items()})
    if isinstance(data.images, np.memmap):
        data.images.flush()
    np.savez(folder / "arrays.npz", **arrays)
    meta = {"key": key, "num_classes": data.num_classes, "info": data.info, "count": len(data),
            "image_shape": list(data.images.shape[1:]), "sources": sources}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))


def _load(folder: Path) -> FERData:
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if SEP not in k}
        named = {name: {k.split(SEP, 1)[1]: z[k] for k in z.files if k.startswith(name + SEP)}
                 for name in PER_SAMPLE_DICTS}
    predicted = folder / LANDMARKS_FILE   # `ldl landmarks`: they fill the samples without landmarks of their own
    if predicted.is_file():
        points = np.load(predicted)
        if points.shape != (meta["count"], 68, 2):
            raise ValueError(f"{predicted}: landmarks of shape {points.shape}, expected ({meta['count']}, 68, 2) for "
                             "this cache entry; run `ldl landmarks --overwrite` again or delete the file")
        own = arrays.get("landmarks")
        arrays["landmarks"] = points if own is None else np.where(np.isfinite(own), own, points)
    images = np.load(folder / "images.npy", mmap_mode="r")
    return FERData(images=images, num_classes=meta["num_classes"], info={**meta["info"], CACHE_ENTRY: str(folder)},
                   **arrays, **named)
