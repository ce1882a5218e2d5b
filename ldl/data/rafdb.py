"""RAF-DB basic (DATASETS.md section 1).

raf-basic/EmoLabel/list_patition_label.txt   `<name>.jpg <label 1..7>` (no header; the last line
                                             may lack a newline); split by the name's prefix
raf-basic/Image/aligned/<stem>_aligned.jpg   aligned faces
distribution_basic.txt (optional)            `<name>.jpg p1 ... p7 ` vote fractions in native
                                             column order, located by data.rafdb.distribution_file
                                             or found in EmoLabel/ or the root
raf-basic/Annotation/manual/<stem>_manu_attri.txt (optional; elsewhere: data.rafdb.attributes_dir)
    one file per image (stem train_00001 / test_0001), 8 lines: lines 1-5 the (x, y) of 5
    landmarks (eye centres, nose tip, mouth corners), then one integer per line: gender
    (0 male, 1 female, 2 unsure), race (0 Caucasian, 1 African-American, 2 Asian), age
    (0: 0-3, 1: 4-19, 2: 20-39, 3: 40-69, 4: 70+).  Read as the groups gender, race and age.
RAF-DB has no validation split: `val` is held out of train (data.val_fraction).

The manual-annotation layout is confirmed by the README distributed with RAF-DB (quoted in full in
a public repository: Annotation/manual.zip holds "train_XXXXX_manu_attri.txt" /
"test_XXXX_manu_attri.txt"; "the first five lines contain location info (x, y) of 5 landmarks.
The next three lines presents information of gender, race and age attributes respectively", with
the codes above) and by public loaders that read lines 6-8 with int(line) from
Annotation/manual/<stem>_manu_attri.txt.  [UNCONFIRMED] the separator inside a landmark line
(loaders split on a tab or read the file as tab-separated; any whitespace is accepted here), the
number format, and whether every image has a file (an image without one has unknown attributes).
The landmarks are checked, not loaded: public loaders align Image/original with them, so they are
taken to be in the original images' pixels, not the aligned ones' [UNCONFIRMED; inferred].
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from ldl.data import register_dataset
from ldl.data.dataset import FERData
from ldl.data.groups import AGE_BINS, stack_groups
from ldl.data.labels import RAFDB_COLUMN_TO_CANONICAL, RAFDB_TO_CANONICAL, reorder_columns
from ldl.data.loading import (DataError, ErrorPolicy, cached_split, data_root, decode_into, require_dir,
                              require_file, train_val_test)

LABEL_FILE = "EmoLabel/list_patition_label.txt"
ATTRIBUTE_DIR = "Annotation/manual"
MANUAL_ATTRIBUTES = (("gender", ("male", "female", "unsure")),          # lines 6, 7, 8, by code
                     ("race", ("caucasian", "african-american", "asian")),
                     ("age", tuple(name for _, name in AGE_BINS)))
CANONICAL_TO_RAFDB = {c: r for r, c in RAFDB_TO_CANONICAL.items()}


def _part_of(name: str) -> str:
    """The split a line belongs to, by its name's prefix; a name with neither prefix counts as train's."""
    return "test" if name.startswith("test") else "train"


def read_label_file(path: Path, policy: ErrorPolicy, part: str) -> list[tuple[str, int, int]]:
    """(name, canonical label, line number) for every well-formed line of split `part`.  Only
    the part's own bad lines are reported, so each is counted once over the splits' builds."""
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or _part_of(parts[0]) != part:
            continue
        if len(parts) != 2:
            policy.bad(f"{path}:{line_no}", "malformed line", repr(line))
            continue
        name, raw = parts
        if not raw.lstrip("-").isdigit() or int(raw) not in RAFDB_TO_CANONICAL:
            policy.bad(f"{path}:{line_no}", "unknown label", f"{raw!r} (RAF-DB labels are 1..7)")
            continue
        if not name.startswith(("train", "test")):
            policy.bad(f"{path}:{line_no}", "malformed line", f"name {name!r} starts with neither train nor test")
            continue
        rows.append((name, RAFDB_TO_CANONICAL[int(raw)], line_no))
    return rows


def read_distribution_file(path: Path, policy: ErrorPolicy, part: str) -> dict[str, np.ndarray]:
    """name -> 7 vote fractions for the lines of split `part` (bad lines reported as in read_label_file)."""
    out = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()  # also absorbs the trailing space of every line
        if not parts or _part_of(parts[0]) != part:
            continue
        try:
            values = np.array([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            values = np.array([])
        if len(values) != 7 or not np.all(np.isfinite(values)) or (values < 0).any() or abs(values.sum() - 1) > 1e-3:
            policy.bad(f"{path}:{line_no}", "malformed line", "expected a name and 7 non-negative floats summing to 1")
            continue
        out[parts[0]] = values
    return out


def read_attribute_file(path: Path, policy: ErrorPolicy) -> dict[str, str] | None:
    """{gender, race, age} groups of one `<stem>_manu_attri.txt` (None if it is malformed)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        policy.bad(f"{path}:1", "malformed attribute file", f"not text ({error.reason} at byte {error.start})")
        return None
    lines = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) != 5 + len(MANUAL_ATTRIBUTES):
        policy.bad(f"{path}:1", "malformed attribute file",
                   f"{len(lines)} lines, expected 5 landmark lines then gender, race and age")
        return None
    for line_no, parts in lines[:5]:
        try:
            ok = len(parts) == 2 and all(math.isfinite(float(v)) for v in parts)
        except ValueError:
            ok = False
        if not ok:
            policy.bad(f"{path}:{line_no}", "malformed attribute file", f"landmark line {' '.join(parts)!r} is not 'x y'")
            return None
    groups = {}
    for (line_no, parts), (attribute, names) in zip(lines[5:], MANUAL_ATTRIBUTES):
        raw = " ".join(parts)
        if len(parts) != 1 or not parts[0].isdigit() or int(parts[0]) >= len(names):
            codes = ", ".join(f"{i} {n}" for i, n in enumerate(names))
            policy.bad(f"{path}:{line_no}", "unknown attribute", f"{attribute} {raw!r} (codes: {codes})")
            return None
        groups[attribute] = names[int(parts[0])]
    return groups


def _attributes_dir(cfg: DictConfig, root: Path) -> Path | None:
    if cfg.data.rafdb.attributes_dir:
        return require_dir(Path(cfg.data.rafdb.attributes_dir).expanduser(), "data.rafdb.attributes_dir")
    return root / ATTRIBUTE_DIR if (root / ATTRIBUTE_DIR).is_dir() else None


def _distribution_path(cfg: DictConfig, root: Path) -> Path | None:
    if cfg.data.rafdb.distribution_file:
        return require_file(Path(cfg.data.rafdb.distribution_file).expanduser(), "data.rafdb.distribution_file")
    for candidate in (root / "EmoLabel" / "distribution_basic.txt", root / "distribution_basic.txt"):
        if candidate.is_file():
            return candidate
    return None


@register_dataset("rafdb")
def rafdb_split(cfg: DictConfig, split: str) -> FERData:
    root = data_root(cfg)
    label_file = require_file(root / LABEL_FILE, "RAF-DB label file")
    dist_file = _distribution_path(cfg, root)
    attributes_dir = _attributes_dir(cfg, root)

    def native(part: str) -> FERData:
        def build(alloc, policy: ErrorPolicy) -> FERData:
            rows = read_label_file(label_file, policy, part)
            if not rows:
                raise DataError(f"{label_file}: no '{part}_*' lines: the {part} split is empty")
            dists = read_distribution_file(dist_file, policy, part) if dist_file else None
            if dists is not None:
                for name, _, line_no in rows:
                    if name not in dists:
                        policy.bad(f"{dist_file}", "missing distribution", f"no line for {name} ({label_file}:{line_no})")
                rows = [r for r in rows if r[0] in dists]
            groups = [{} for _ in rows]
            if attributes_dir is not None:
                files = [attributes_dir / f"{name.split('.')[0]}_manu_attri.txt" for name, _, _ in rows]
                alloc.depends_on(files)   # an edited or added attribute file rebuilds the entry
                if cfg.data.rafdb.attributes_dir and not any(f.is_file() for f in files):
                    raise DataError(f"data.rafdb.attributes_dir {attributes_dir}: no attribute file for any of the "
                                    f"{len(files)} {part} images (looked for e.g. {files[0].name})")
                groups = [read_attribute_file(f, policy) if f.is_file() else {} for f in files]
                rows = [r for r, g in zip(rows, groups) if g is not None]
                groups = [g for g in groups if g is not None]
            paths = [root / "Image" / "aligned" / f"{name.split('.')[0]}_aligned.jpg" for name, _, _ in rows]
            images, kept = decode_into(alloc, paths, cfg.data.image_size, policy, f"decode rafdb {part}", cfg.log.progress,
                                       origins=[f"{label_file}:{line_no}" for _, _, line_no in rows])
            rows = [r for r, k in zip(rows, kept) if k]
            groups = [g for g, k in zip(groups, kept) if k]
            dist = None
            if dists is not None:
                dist = reorder_columns(np.stack([dists[name] for name, _, _ in rows]), RAFDB_COLUMN_TO_CANONICAL)
            return FERData(images=images, labels=np.array([r[1] for r in rows], dtype=np.int64), num_classes=8,
                           names=np.array([r[0] for r in rows]), dist=dist, groups=stack_groups(groups))

        sources = [label_file] + ([dist_file] if dist_file else [])
        return cached_split(cfg, part, sources, {"dist": str(dist_file), "attributes": str(attributes_dir)}, build)

    return train_val_test(cfg, split, native)


def write_rafdb(root: Path, splits: dict[str, tuple[Iterable[np.ndarray], Iterable[int]]], quality: int = 90,
                distributions: dict[str, np.ndarray] | None = None) -> None:
    """Write uint8 RGB images and canonical labels in RAF-DB's layout (the reader's inverse):
    {split: (images, labels)} for split train / test, names train_00001 / test_0001; with
    `distributions` ({split: [N, 7] canonical rows}) also EmoLabel/distribution_basic.txt."""
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    lines, dist_lines = [], []
    for split, (images, labels) in splits.items():
        digits = 5 if split == "train" else 4
        for i, (image, label) in enumerate(zip(images, labels)):
            stem = f"{split}_{i + 1:0{digits}d}"
            Image.fromarray(image).save(root / "Image" / "aligned" / f"{stem}_aligned.jpg", quality=quality)
            lines.append(f"{stem}.jpg {CANONICAL_TO_RAFDB[int(label)]}")
            if distributions is not None:   # native column order, a trailing space, as the real file
                row = distributions[split][i][RAFDB_COLUMN_TO_CANONICAL]
                dist_lines.append(f"{stem}.jpg " + " ".join(f"{v:.6f}" for v in row) + " \n")
    (root / LABEL_FILE).write_text("\n".join(lines))   # no newline after the last line, as the real file
    if distributions is not None:
        (root / "EmoLabel" / "distribution_basic.txt").write_text("".join(dist_lines))
