"""A CSV manifest for any other dataset.

Header columns: path, label, split (train / val / test), optionally valence, arousal, and
distribution columns p_<Class> named in the canonical order (p_Neutral ... p_Contempt), and
one column group_<attribute> per demographic attribute (group_gender, group_race ...) holding
each sample's group (a name of letters, digits, spaces and _-+.); an empty cell is an unknown value.
`label` is a canonical class name (case-insensitive) or index 0..7; relative paths are
resolved against the manifest's folder.  data.root is the manifest file.  A path that leads
outside the manifest's folder (`../x.jpg`, an absolute path elsewhere, a symlink out of it) is
an error naming the line unless data.manifest.allow_outside_root is set: a manifest passed
around must not make a run read arbitrary files.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ldl.data import register_dataset
from ldl.data.dataset import FERData
from ldl.data.groups import stack_groups
from ldl.data.labels import CLASSES
from ldl.data.loading import DataError, ErrorPolicy, cached_split, check_classes, decode_into, require_file

BY_NAME = {name.lower(): i for i, name in enumerate(CLASSES)}
DIST_COLUMNS = [f"p_{name}" for name in CLASSES]
GROUP_PREFIX = "group_"
GROUP_NAME = re.compile(r"[A-Za-z0-9_-]+")
GROUP_VALUE = re.compile(r"[\w +.-]+")   # a name, not a list or a probability dict pasted into the cell
SPLITS = ("train", "val", "test")


def _label(raw: str) -> int | None:
    raw = raw.strip()
    if raw.lower() in BY_NAME:
        return BY_NAME[raw.lower()]
    if raw.isdigit() and int(raw) < len(CLASSES):
        return int(raw)
    return None


def image_path(raw: str, manifest: Path, where: str, allow_outside_root: bool = False) -> Path:
    """A row's image, relative to the manifest's folder; refused if it resolves outside it."""
    path = manifest.parent / raw   # an absolute `raw` replaces the folder
    root = manifest.parent.resolve()
    if not allow_outside_root and not path.resolve().is_relative_to(root):
        raise DataError(f"{where}: image path {raw!r} leads outside the manifest's folder {root} "
                        f"(to {path.resolve()}); set data.manifest.allow_outside_root=true to read it")
    return path


@register_dataset("manifest")
def manifest_split(cfg: DictConfig, split: str) -> FERData:
    if not cfg.data.root:
        raise DataError("data.root must be the manifest CSV file for data.name=manifest")
    manifest = require_file(Path(cfg.data.root).expanduser(), "manifest")
    allow_outside_root = cfg.data.manifest.allow_outside_root

    def build(alloc, policy: ErrorPolicy) -> FERData:
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ("path", "label", "split") if c not in header]
            if missing:
                raise DataError(f"{manifest}:1: missing column(s) {missing}; header is {header}")
            has_va = "valence" in header and "arousal" in header
            dist_cols = [c for c in DIST_COLUMNS if c in header]
            group_cols = [c for c in header if c.startswith(GROUP_PREFIX)]
            bad = [c for c in group_cols if not GROUP_NAME.fullmatch(c.removeprefix(GROUP_PREFIX))]
            if bad:
                raise DataError(f"{manifest}:1: group column {bad[0]!r} must be group_<attribute> with an "
                                "attribute of letters, digits, '_' or '-'")
            rows = []
            for line_no, row in enumerate(reader, start=2):
                where = f"{manifest}:{line_no}"
                # each build reports only its own split's bad rows (a row without one: train's)
                if (row.get("split") if row.get("split") in SPLITS else "train") != split:
                    continue
                if None in row or any(v is None for v in row.values()):
                    policy.bad(where, "malformed line", "wrong number of fields")
                    continue
                if row["split"] not in SPLITS:
                    policy.bad(where, "malformed line", f"split {row['split']!r} (train, val or test)")
                    continue
                label = _label(row["label"])
                if label is None:
                    policy.bad(where, "unknown label", f"{row['label']!r} (a class name of {CLASSES} or 0..7)")
                    continue
                va = (math.nan, math.nan)
                if has_va:
                    try:
                        va = (float(row["valence"]), float(row["arousal"]))
                    except ValueError:
                        policy.bad(where, "malformed line", "valence/arousal not numbers")
                        continue
                    if any(math.isnan(x) or abs(x) > 1 for x in va):
                        policy.bad(where, "out-of-range VA", f"{va} (must be finite, within [-1, 1])")
                        continue
                dist = None
                if dist_cols:
                    try:
                        dist = np.array([float(row.get(c, 0) or 0) for c in DIST_COLUMNS])
                    except ValueError:
                        policy.bad(where, "malformed line", "distribution columns not numbers")
                        continue
                    if (dist < 0).any() or not math.isclose(dist.sum(), 1, abs_tol=1e-3):
                        policy.bad(where, "malformed line", "distribution columns must be >= 0 and sum to 1")
                        continue
                groups = {c.removeprefix(GROUP_PREFIX): row[c].strip() for c in group_cols if row[c].strip()}
                odd = [f"{GROUP_PREFIX}{k} {v!r}" for k, v in groups.items() if not GROUP_VALUE.fullmatch(v)]
                if odd:
                    policy.bad(where, "malformed line", f"{odd[0]}: a group is a name of letters, digits, spaces "
                                                        "and _-+. (e.g. female, 20-39, 70+, latino hispanic)")
                    continue
                rows.append((image_path(row["path"], manifest, where, allow_outside_root), label, va, dist, where, groups))
        if not rows:
            raise DataError(f"{manifest}: no '{split}' rows: the {split} split is empty")
        images, kept = decode_into(alloc, [r[0] for r in rows], cfg.data.image_size, policy,
                                   f"decode manifest {split}", cfg.log.progress, origins=[r[4] for r in rows])
        rows = [r for r, k in zip(rows, kept) if k]
        return FERData(images=images, labels=np.array([r[1] for r in rows], dtype=np.int64), num_classes=8,
                       names=np.array([str(r[0]) for r in rows]),
                       va=np.array([r[2] for r in rows], dtype=np.float32) if has_va else None,
                       dist=np.stack([r[3] for r in rows]).astype(np.float32) if dist_cols else None,
                       groups=stack_groups([r[5] for r in rows]))

    data = cached_split(cfg, split, [manifest], {"allow_outside_root": allow_outside_root}, build)
    if split == "train":
        check_classes(data, f"{manifest} train")
    return data
