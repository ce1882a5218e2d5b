"""SFEW 2.0 aligned faces (DATASETS.md section 4): labels are class folder names.

Train/Train_Aligned_Faces/<Class>/*.png and Val/Val_Aligned_Faces/<Class>/*.png (or the
flattened <root>/images/Train_Aligned_Faces/...).  Test labels are withheld by the challenge,
so papers use Val as the test set; `val` is held out of Train (data.val_fraction).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ldl.data import register_dataset
from ldl.data.dataset import FERData
from ldl.data.labels import SFEW_FOLDER_TO_CANONICAL
from ldl.data.loading import DataError, ErrorPolicy, cached_split, data_root, decode_into, train_val_test

NATIVE = {"train": "Train_Aligned_Faces", "test": "Val_Aligned_Faces"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def find_split_folder(root: Path, name: str) -> Path:
    for candidate in [root / name, *root.glob(f"*/{name}"), *root.glob(f"*/*/{name}")]:
        if candidate.is_dir():
            return candidate
    raise DataError(f"SFEW: no {name}/ folder under {root} (expected e.g. {root}/Train/{name}/<Class>/*.png)")


@register_dataset("sfew")
def sfew_split(cfg: DictConfig, split: str) -> FERData:
    root = data_root(cfg)

    def native(part: str) -> FERData:
        folder = find_split_folder(root, NATIVE[part])
        files = sorted(p for p in folder.rglob("*") if p.is_file())

        def build(alloc, policy: ErrorPolicy) -> FERData:
            paths, labels = [], []
            for path in files:
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    policy.bad(str(path), "not an image", "unexpected file in a class folder")
                    continue
                cls = path.parent.name
                if path.parent.parent != folder or cls not in SFEW_FOLDER_TO_CANONICAL:
                    policy.bad(str(path), "unknown label",
                               f"folder {cls!r} is not one of {sorted(SFEW_FOLDER_TO_CANONICAL)}")
                    continue
                paths.append(path)
                labels.append(SFEW_FOLDER_TO_CANONICAL[cls])
            if not paths:
                raise DataError(f"{folder}: no images: the {part} split is empty")
            images, kept = decode_into(alloc, paths, cfg.data.image_size, policy, f"decode sfew {part}", cfg.log.progress)
            return FERData(images=images, labels=np.array(labels, dtype=np.int64)[kept], num_classes=8,
                           names=np.array([f"{p.parent.name}/{p.name}" for p in paths])[kept])

        return cached_split(cfg, part, files, {}, build)

    return train_val_test(cfg, split, native)
