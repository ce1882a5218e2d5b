"""FERPlus (DATASETS.md section 5): FER2013 pixels + crowd votes as real label distributions.

fer2013.csv     emotion,pixels,Usage   (2304 grey values per row)
fer2013new.csv  Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
Row i of one file describes row i of the other, so the files must have exactly as many rows
(a row missing mid-file would shift every pair after it): a difference is an error in every
`data.on_error` mode.  Usage Training / PublicTest / PrivateTest map to
train / val / test.  Rows with an empty image name (not a face) are excluded, as S8 does.

Votes follow microsoft/FERPlus (S8): votes <= 1 are outliers and set to 0; then
- majority (S8's evaluation rule, always used for val and test): the argmax if it holds more than
  half of the remaining votes, else the image is 'unknown' and dropped;
- crossentropy: the top emotions until they cover >= 75% of the votes (at most 3); dropped when
  they hold <= 50% or unknown/NF is among them;
- argmax: the argmax over all 10 columns (first max wins), dropped if unknown or NF.
Images whose winner is unknown/NF are dropped.  `dist` is the 8-emotion vote distribution after
outlier removal (canonical order): a real crowd label distribution for the LDL metrics.
"""
from __future__ import annotations

import csv
from itertools import zip_longest
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm.auto import tqdm

from ldl.data import register_dataset
from ldl.data.dataset import FERData
from ldl.data.labels import FERPLUS_VOTE_TO_CANONICAL, reorder_columns
from ldl.data.loading import DataError, ErrorPolicy, cached_split, data_root, require_file

USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
SPLIT_OF_USAGE = {usage: split for split, usage in USAGE.items()}
NEW_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
              "contempt", "unknown", "NF"]
LABEL_MODES = ("majority", "crossentropy", "argmax")


def process_votes(votes: np.ndarray, mode: str) -> int | None:
    """Winning vote column (0..7) under `mode`, or None when the image is unknown / not a face."""
    v = np.where(votes <= 1, 0.0, votes.astype(np.float64))
    total = v.sum()
    if total <= 0:
        return None
    if mode == "majority":
        winner = int(np.argmax(v))
        return winner if v[winner] > 0.5 * total and winner < 8 else None
    if mode == "crossentropy":
        order = np.argsort(-v, kind="stable")
        kept, covered = [], 0.0
        for idx in order:
            if covered >= 0.75 * total or len(kept) == 3 or v[idx] == 0:
                break
            kept.append(int(idx))
            covered += v[idx]
        if covered <= 0.5 * total or covered < 0.75 * total or any(k >= 8 for k in kept):
            return None
        return kept[0]
    if mode == "argmax":
        winner = int(np.argmax(votes))
        return winner if winner < 8 else None
    raise ValueError(f"data.ferplus.label_mode must be one of {LABEL_MODES}, got {mode!r}")


def _owner(pix: list[str], vote: list[str]) -> str:
    """The split a pair of rows belongs to: the votes' Usage, else the pixels', else train.  Each
    split's build reports only its own bad rows, so every one is counted once."""
    for usage in (vote[:1], pix[2:3]):
        if usage and usage[0] in SPLIT_OF_USAGE:
            return SPLIT_OF_USAGE[usage[0]]
    return "train"


@register_dataset("ferplus")
def ferplus_split(cfg: DictConfig, split: str) -> FERData:
    root = data_root(cfg)
    pixels_file = require_file(root / "fer2013.csv", "FER2013 pixels file")
    labels_path = Path(cfg.data.ferplus.labels_file).expanduser() if cfg.data.ferplus.labels_file else root / "fer2013new.csv"
    labels_file = require_file(labels_path, "FERPlus votes file")
    mode = cfg.data.ferplus.label_mode if split == "train" else "majority"
    size = cfg.data.image_size

    def build(alloc, policy: ErrorPolicy) -> FERData:
        with open(pixels_file, newline="") as fp, open(labels_file, newline="") as fl:
            pix_rows, vote_rows = csv.reader(fp), csv.reader(fl)
            pix_header, vote_header = next(pix_rows, None), next(vote_rows, None)
            if pix_header is None or [h.strip() for h in pix_header] != ["emotion", "pixels", "Usage"]:
                raise DataError(f"{pixels_file}:1: expected header emotion,pixels,Usage, got {pix_header}")
            if vote_header != NEW_HEADER:
                raise DataError(f"{labels_file}:1: expected header {','.join(NEW_HEADER)}, got {vote_header}")
            rows, excluded = [], {"no_face_name": 0, "unknown_or_nf": 0}
            for line_no, (pix, vote) in enumerate(zip_longest(pix_rows, vote_rows), start=2):
                if pix is None or vote is None:
                    ended, goes_on = (pixels_file, labels_file) if pix is None else (labels_file, pixels_file)
                    raise DataError(f"{ended} ends at line {line_no - 1} but {goes_on} goes on (line {line_no}): "
                                    "the two files must pair row by row, so they need the same number of rows")
                if _owner(pix, vote) != split:
                    continue
                if len(vote) != 12:
                    policy.bad(f"{labels_file}:{line_no}", "malformed line", f"{len(vote)} fields, expected 12")
                    continue
                if vote[0] != (pix[2] if len(pix) > 2 else None):
                    policy.bad(f"{labels_file}:{line_no}", "malformed line",
                               f"Usage {vote[0]!r} differs from {pixels_file.name}'s {pix[2:3]}: are the files aligned?")
                    continue
                if not vote[1]:
                    excluded["no_face_name"] += 1
                    continue
                try:
                    votes = np.array([int(x) for x in vote[2:]], dtype=np.int64)
                except ValueError:
                    policy.bad(f"{labels_file}:{line_no}", "malformed line", "non-integer vote")
                    continue
                if (votes < 0).any():
                    policy.bad(f"{labels_file}:{line_no}", "malformed line", "negative vote")
                    continue
                winner = process_votes(votes, mode)
                if winner is None:
                    excluded["unknown_or_nf"] += 1
                    continue
                try:
                    grey = np.array(pix[1].split(), dtype=np.uint8)
                except ValueError:
                    grey = np.array([])
                if grey.size != 48 * 48:
                    policy.bad(f"{pixels_file}:{line_no}", "unreadable image", f"{grey.size} pixel values, expected 2304")
                    continue
                emotions = np.where(votes[:8] <= 1, 0, votes[:8]).astype(np.float64)
                dist = emotions / emotions.sum() if emotions.sum() > 0 else np.eye(8)[winner]
                rows.append((vote[1], FERPLUS_VOTE_TO_CANONICAL[winner], dist, grey))
        if not rows:
            raise DataError(f"{labels_file}: no usable {USAGE[split]} rows: the {split} split is empty")
        images = alloc(len(rows), size, size)
        for i, row in enumerate(tqdm(rows, desc=f"decode ferplus {split}", unit="img", disable=not cfg.log.progress)):
            img = Image.fromarray(row[3].reshape(48, 48), mode="L").resize((size, size), Image.BILINEAR)
            images[i] = np.asarray(img.convert("RGB"))
        dist = reorder_columns(np.stack([r[2] for r in rows]), FERPLUS_VOTE_TO_CANONICAL)
        data = FERData(images=images, labels=np.array([r[1] for r in rows], dtype=np.int64), num_classes=8,
                       names=np.array([r[0] for r in rows]), dist=dist)
        data.info["excluded"] = excluded
        return data

    return cached_split(cfg, split, [pixels_file, labels_file], {"mode": mode}, build)
