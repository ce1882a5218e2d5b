"""The canonical label space and each dataset's mapping into it (DATASETS.md section 7)."""
from __future__ import annotations

import numpy as np

# AffectNet's code order; every dataset maps into it.  7-class protocols drop Contempt.
CLASSES: tuple[str, ...] = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
CONTEMPT = 7

# Native value -> canonical index; values absent from a map are dropped (e.g. AffectNet 8..10).
RAFDB_TO_CANONICAL = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
AFFECTNET_TO_CANONICAL = {i: i for i in range(8)}
FERPLUS_VOTE_TO_CANONICAL = {0: 0, 1: 1, 2: 3, 3: 2, 4: 6, 5: 5, 6: 4, 7: 7}
FER2013_TO_CANONICAL = {0: 6, 1: 5, 2: 4, 3: 1, 4: 2, 5: 3, 6: 0}
SFEW_FOLDER_TO_CANONICAL = {
    "Angry": 6, "Disgust": 5, "Fear": 4, "Happy": 1, "Neutral": 0, "Sad": 2, "Surprise": 3,
}
# RAF-DB distribution rows are in native column order (Surprise .. Neutral).
RAFDB_COLUMN_TO_CANONICAL = [RAFDB_TO_CANONICAL[i + 1] for i in range(7)]


def class_names(num_classes: int) -> tuple[str, ...]:
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8 (the FER protocols), got {num_classes}")
    return CLASSES[:num_classes]


def reorder_columns(dist: np.ndarray, column_to_canonical: list[int] | dict[int, int]) -> np.ndarray:
    """Move distribution columns (native order) into canonical 8-way order."""
    out = np.zeros((dist.shape[0], len(CLASSES)), dtype=np.float32)
    items = column_to_canonical.items() if isinstance(column_to_canonical, dict) else enumerate(column_to_canonical)
    for native, canonical in items:
        out[:, canonical] = dist[:, native]
    return out
