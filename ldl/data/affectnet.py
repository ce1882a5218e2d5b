"""AffectNet, manually annotated part (DATASETS.md section 2), in both release formats.

CSV release  Manually_Annotated_file_lists/{training,validation}.csv with the header
             subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
             expression,valence,arousal  and images under Manually_Annotated_Images/.
npy release  {train_set,val_set}/images/<id>.jpg with annotations/<id>_{exp,val,aro,lnd}.npy.

Codes 0..7 map to the canonical order (identity); 8 None, 9 Uncertain, 10 No-Face are excluded
by the protocol (counted, not errors), and so is 7 Contempt under the 7-class protocol.
Valence/arousal of -2 is AffectNet's invalid marker and becomes NaN; any other value outside
[-1, 1] is bad input.  The validation set is the test set (no official test set exists);
`val` is held out of training.  data.affectnet.crop_face crops the CSV release's face box.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ldl.data import register_dataset
from ldl.data.dataset import FERData
from ldl.data.loading import DataError, ErrorPolicy, cached_split, data_root, decode_into, train_val_test

HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
          "expression", "valence", "arousal"]
INVALID_VA = -2.0
EXCLUDED_CODES = (8, 9, 10)


def _va_value(raw: str | float, where: str, policy: ErrorPolicy) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        policy.bad(where, "malformed line", f"valence/arousal {raw!r} is not a number")
        return None
    if value == INVALID_VA:
        return math.nan
    if not math.isfinite(value) or abs(value) > 1:
        policy.bad(where, "out-of-range VA", f"{value} (valid: [-1, 1], or -2 for 'no VA')")
        return None
    return value


def _expression(raw, where: str, policy: ErrorPolicy, counts: dict) -> int | None:
    try:
        code = int(float(raw))
    except (TypeError, ValueError):
        policy.bad(where, "unknown label", f"expression {raw!r}")
        return None
    if code in EXCLUDED_CODES:
        counts["excluded_codes"] = counts.get("excluded_codes", 0) + 1
        return None
    if not 0 <= code <= 7:
        policy.bad(where, "unknown label", f"expression {code} (AffectNet codes are 0..10)")
        return None
    return code


def read_csv_release(path: Path, image_dir: Path, policy: ErrorPolicy) -> tuple[list[dict], dict]:
    rows, counts = [], {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != HEADER:
            raise DataError(f"{path}:1: unexpected header {header}; expected {','.join(HEADER)}")
        for line_no, parts in enumerate(reader, start=2):
            where = f"{path}:{line_no}"
            if len(parts) != len(HEADER):
                policy.bad(where, "malformed line", f"{len(parts)} fields, expected {len(HEADER)}")
                continue
            code = _expression(parts[6], where, policy, counts)
            if code is None:
                continue
            valence, arousal = _va_value(parts[7], where, policy), _va_value(parts[8], where, policy)
            if valence is None or arousal is None:
                continue
            try:
                box = tuple(int(float(v)) for v in parts[1:5])
                marks = np.array([float(v) for v in parts[5].split(";")], dtype=np.float32) if parts[5] else None
            except ValueError:
                policy.bad(where, "malformed line", "non-numeric face box or landmarks")
                continue
            if marks is not None and marks.size != 136:
                policy.bad(where, "malformed line", f"{marks.size} landmark numbers, expected 136 (68 points)")
                continue
            rows.append({"name": parts[0], "path": image_dir / parts[0], "label": code, "va": (valence, arousal),
                         "box": box, "landmarks": None if marks is None else marks.reshape(68, 2), "where": where})
    return rows, counts


def read_npy_release(folder: Path, policy: ErrorPolicy) -> tuple[list[dict], dict]:
    rows, counts = [], {}
    annotations = folder / "annotations"
    for image in sorted((folder / "images").glob("*.jpg")):
        stem = image.stem
        where = str(annotations / f"{stem}_exp.npy")
        try:
            code = _expression(np.load(annotations / f"{stem}_exp.npy").item(), where, policy, counts)
            if code is None:
                continue
            valence = _va_value(np.load(annotations / f"{stem}_val.npy").item(), str(annotations / f"{stem}_val.npy"), policy)
            arousal = _va_value(np.load(annotations / f"{stem}_aro.npy").item(), str(annotations / f"{stem}_aro.npy"), policy)
            lnd_path = annotations / f"{stem}_lnd.npy"
            marks = np.asarray(np.load(lnd_path), dtype=np.float32).reshape(-1) if lnd_path.is_file() else None
        except FileNotFoundError as err:
            policy.bad(where, "missing annotation", str(err.filename))
            continue
        except (ValueError, OSError) as err:
            policy.bad(where, "malformed annotation", str(err))
            continue
        if valence is None or arousal is None:
            continue
        if marks is not None and marks.size != 136:
            policy.bad(str(lnd_path), "malformed annotation", f"{marks.size} landmark numbers, expected 136")
            continue
        rows.append({"name": f"{folder.name}/{stem}", "path": image, "label": code, "va": (valence, arousal),
                     "box": None, "landmarks": None if marks is None else marks.reshape(68, 2)})
    return rows, counts


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except OSError:
        return None


@register_dataset("affectnet")
def affectnet_split(cfg: DictConfig, split: str) -> FERData:
    root = data_root(cfg)
    csv_dir = root / "Manually_Annotated_file_lists"
    if csv_dir.is_dir():
        files = {"train": csv_dir / "training.csv", "test": csv_dir / "validation.csv"}
        release = "csv"
    elif (root / "train_set").is_dir():
        files = {"train": root / "train_set", "test": root / "val_set"}
        release = "npy"
    else:
        raise DataError(f"{root}: neither Manually_Annotated_file_lists/ (CSV release) nor train_set/ (npy release)")
    crop = bool(cfg.data.affectnet.crop_face) and release == "csv"

    def native(part: str) -> FERData:
        source = files[part]
        if not source.exists():
            raise DataError(f"AffectNet {part} list not found: {source}")

        def build(alloc, policy: ErrorPolicy) -> FERData:
            if release == "csv":
                rows, counts = read_csv_release(source, root / "Manually_Annotated_Images", policy)
            else:
                rows, counts = read_npy_release(source, policy)
            if not rows:
                raise DataError(f"{source}: no usable samples: the {part} split is empty")
            boxes = [r["box"] for r in rows] if crop else None
            origins = [r["where"] for r in rows] if release == "csv" else None   # npy: the image is the source
            # Landmarks follow the image into the resized (and cropped) frame.
            sizes = [_image_size(r["path"]) for r in rows] if any(r["landmarks"] is not None for r in rows) else None
            images, kept = decode_into(alloc, [r["path"] for r in rows], cfg.data.image_size, policy,
                                       f"decode affectnet {part}", cfg.log.progress, boxes, origins)
            rows = [r for r, k in zip(rows, kept) if k]
            landmarks = None
            if sizes is not None:
                sizes = [s for s, k in zip(sizes, kept) if k]
                landmarks = np.full((len(rows), 68, 2), np.nan, dtype=np.float32)
                for i, (r, size) in enumerate(zip(rows, sizes)):
                    if r["landmarks"] is None or size is None:
                        continue
                    x0, y0, w, h = r["box"] if crop else (0, 0, *size)
                    landmarks[i] = (r["landmarks"] - [x0, y0]) * [cfg.data.image_size / w, cfg.data.image_size / h]
            data = FERData(images=images, labels=np.array([r["label"] for r in rows], dtype=np.int64), num_classes=8,
                           names=np.array([r["name"] for r in rows]),
                           va=np.array([r["va"] for r in rows], dtype=np.float32), landmarks=landmarks)
            data.info.update(counts)
            return data

        # the npy release lists its samples by the image files themselves, so all of them are sources
        sources = [source] if source.is_file() else sorted([*(source / "annotations").glob("*.npy"),
                                                            *(source / "images").glob("*.jpg")])
        return cached_split(cfg, part, sources, {"release": release, "crop": crop}, build)

    return train_val_test(cfg, split, native)
