"""AffectNet+ per-image JSON soft labels (DATASETS.md section 3), official or ours.

AffectNet+/human_annotated/{train_set,validation_set}/{images/<id>.jpg, annotations/<id>.json}
JSON keys (lowercase, hyphenated; capitalised variants accepted): human-label (AffectNet code),
soft-label (8 floats, AffectNet order), subset (0 easy, 1 challenging, 2 difficult),
meta-data {valence, arousal, landmark-68 (136 numbers), age (years, binned), gender and race
({group: probability}: the argmax is the sample's group, the probabilities are kept), ...}.
`ldl teacher label` writes the same layout, so our teacher's labels and the official files load
through this one reader.  Our one addition, absent from official files:
meta-data.label-distribution (8 floats, canonical order), the source dataset's true or crowd
distribution when it has one (the synthetic truth), read as `dist` when every sample carries it,
so annotator noise and the LDL metrics use the truth.
validation_set is the test set; `val` is held out of training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ldl.data import register_dataset
from ldl.data.dataset import FERData
from ldl.data.groups import parse_age, parse_probabilities, stack_groups, stack_probabilities
from ldl.data.loading import DataError, ErrorPolicy, cached_split, data_root, decode_into, train_val_test

SPLIT_FOLDERS = {"train": "train_set", "test": "validation_set"}


def _get(record: dict, key: str) -> Any:
    for variant in (key, key.title(), key.replace("meta-data", "Metadata")):
        if variant in record:
            return record[variant]
    return None


def parse_record(record: dict, where: str, policy: ErrorPolicy) -> dict | None:
    """One AffectNet+ JSON record -> label, soft label, subset, VA, landmarks (or None if bad)."""
    label, soft, subset = _get(record, "human-label"), _get(record, "soft-label"), _get(record, "subset")
    meta = _get(record, "meta-data") or {}
    if not isinstance(label, int) or not 0 <= label <= 10:
        policy.bad(where, "unknown label", f"human-label {label!r}")
        return None
    if label > 7:  # None / Uncertain / No-Face: excluded by every protocol
        return {"excluded": True}
    if not isinstance(soft, list) or len(soft) != 8:
        policy.bad(where, "malformed annotation", "soft-label must be a list of 8 numbers")
        return None
    soft_arr = np.asarray(soft, dtype=np.float64)
    if not np.all(np.isfinite(soft_arr)) or (soft_arr < 0).any() or soft_arr.sum() <= 0:
        policy.bad(where, "malformed annotation", f"soft-label {soft} is not a distribution")
        return None
    if subset not in (0, 1, 2):
        policy.bad(where, "malformed annotation", f"subset {subset!r} (0 easy, 1 challenging, 2 difficult)")
        return None
    va = []
    for key in ("valence", "arousal"):
        value = meta.get(key, math.nan)
        value = math.nan if value is None or value == -2 else float(value)
        if not math.isnan(value) and abs(value) > 1:
            policy.bad(where, "out-of-range VA", f"{key} {value}")
            return None
        va.append(value)
    truth = meta.get("label-distribution")
    truth_arr = None if truth is None else np.asarray(truth, dtype=np.float64)
    if truth_arr is not None and (truth_arr.shape != (8,) or not np.all(np.isfinite(truth_arr))
                                  or (truth_arr < 0).any() or truth_arr.sum() <= 0):
        policy.bad(where, "malformed annotation", "meta-data.label-distribution must be a list of 8 numbers >= 0")
        return None
    marks = meta.get("landmark-68")
    if marks is not None and len(marks) != 136:
        policy.bad(where, "malformed annotation", f"landmark-68 has {len(marks)} numbers, expected 136")
        return None
    attributes = parse_groups(meta, where, policy)
    if attributes is None:
        return None
    return {"label": label, "soft": soft_arr / soft_arr.sum(), "subset": subset, "va": va,
            "dist": None if truth_arr is None else truth_arr / truth_arr.sum(),
            "landmarks": None if marks is None else np.asarray(marks, dtype=np.float32).reshape(68, 2),
            "groups": attributes[0], "group_probs": attributes[1]}


def parse_groups(meta: dict, where: str, policy: ErrorPolicy) -> tuple[dict, dict] | None:
    """meta-data's demographic attributes: age (years, binned as RAF-DB's), gender and race
    ({group: probability}: the argmax is the group, the probabilities are kept).  An absent key
    is an unknown value; a malformed one goes through `policy` (None)."""
    groups, probs = {}, {}
    if meta.get("age") is not None:
        age = parse_age(meta["age"])
        if age is None:
            policy.bad(where, "malformed annotation", f"meta-data.age {meta['age']!r} is not an age in years")
            return None
        groups["age"] = age
    for key in ("gender", "race"):
        if meta.get(key) is not None:
            parsed = parse_probabilities(meta[key])
            if parsed is None:
                policy.bad(where, "malformed annotation",
                           f"meta-data.{key} {meta[key]!r} must map each group to a probability >= 0")
                return None
            groups[key], probs[key] = parsed
    return groups, probs


def write_record(path: Path, human_label: int, soft_label: np.ndarray, subset: int, meta: dict) -> None:
    """Write one record in the AffectNet+ layout (used by the teacher)."""
    record = {"human-label": int(human_label), "soft-label": [float(round(p, 6)) for p in soft_label],
              "subset": int(subset), "meta-data": meta}
    path.write_text(json.dumps(record))


def _all_or_none(rows: list[np.ndarray | None]) -> np.ndarray | None:
    """Stacked per-sample distributions, or None unless every sample has one (a partial column
    would mix truth and missing values)."""
    return None if any(r is None for r in rows) else np.stack(rows).astype(np.float32)


@register_dataset("affectnet_plus")
def affectnet_plus_split(cfg: DictConfig, split: str) -> FERData:
    root = data_root(cfg)
    base = root / "human_annotated" if (root / "human_annotated").is_dir() else root

    def native(part: str) -> FERData:
        folder = base / SPLIT_FOLDERS[part]
        if not (folder / "annotations").is_dir():
            raise DataError(f"AffectNet+ {part} annotations not found: {folder / 'annotations'}")
        files = sorted((folder / "annotations").glob("*.json"))

        def build(alloc, policy: ErrorPolicy) -> FERData:
            rows, excluded = [], 0
            for file in files:
                try:
                    record = json.loads(file.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    policy.bad(f"{file}:{getattr(err, 'lineno', 1)}", "malformed annotation", str(err))
                    continue
                parsed = parse_record(record, str(file), policy)
                if parsed is None:
                    continue
                if parsed.get("excluded"):
                    excluded += 1
                    continue
                parsed["name"], parsed["path"] = file.stem, folder / "images" / f"{file.stem}.jpg"
                rows.append(parsed)
            if not rows:
                raise DataError(f"{folder}: no usable samples: the {part} split is empty")
            images, kept = decode_into(alloc, [r["path"] for r in rows], cfg.data.image_size, policy,
                                       f"decode affectnet+ {part}", cfg.log.progress,
                                       origins=[str(folder / "annotations" / f"{r['name']}.json") for r in rows])
            rows = [r for r, k in zip(rows, kept) if k]
            landmarks = None
            if any(r["landmarks"] is not None for r in rows):
                # AffectNet+ images are 224x224 face crops (DATASETS.md, unconfirmed): rescale to our size.
                landmarks = np.stack([r["landmarks"] if r["landmarks"] is not None else np.full((68, 2), np.nan)
                                      for r in rows]).astype(np.float32) * (cfg.data.image_size / 224)
            data = FERData(images=images, labels=np.array([r["label"] for r in rows], dtype=np.int64), num_classes=8,
                           names=np.array([r["name"] for r in rows]), va=np.array([r["va"] for r in rows], np.float32),
                           soft=np.stack([r["soft"] for r in rows]).astype(np.float32),
                           subset=np.array([r["subset"] for r in rows], dtype=np.int64), landmarks=landmarks,
                           dist=_all_or_none([r["dist"] for r in rows]), groups=stack_groups([r["groups"] for r in rows]))
            data.group_probs, data.info["group_prob_columns"] = stack_probabilities([r["group_probs"] for r in rows])
            data.info["excluded_codes"] = excluded
            return data

        return cached_split(cfg, part, files, {}, build)

    return train_val_test(cfg, split, native)
