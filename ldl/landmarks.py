"""`ldl landmarks`: 68 facial landmarks for datasets that ship none (RAF-DB, SFEW, FERPlus, ...).

dlib's 68-point shape predictor (`shape_predictor_68_face_landmarks.dat` of the
face-recognition-models package; its training set, iBUG 300-W, excludes commercial use) runs
over every image of the dataset's packed cache entries and writes the points beside them
(`<entry>/landmarks.npy`, float32 [N, 68, 2] in pixels of the cached images, iBUG order, and
`landmarks.json` with how they were made).  Every later load of that entry carries them
(ldl/data/cache.py), so the teacher's AU-proxy head, the landmark features and
`method.ldlva.space=landmarks` work on those datasets.  A dataset's own landmarks (AffectNet,
the synthetic set) always win; predicted points only fill the samples that have none.

The cached images are face crops.  The face box is dlib's HOG face detector's where it finds
exactly one face (`--box detect`, the default; the whole image otherwise, and the finds are
counted), or always the whole image (`--box image`, 3-6x faster).  The predictor was trained on
the detector's boxes: on 200 synthetic faces the detector found 70 % and the error to the true
points fell from 0.25 to 0.17 inter-ocular distances (benchmarks/README.md).  Images under 150 px are upscaled (bilinear) to
150 px for the predictor and the points scaled back.  An entry is rebuilt when its source
images change (cache re-checks), and its landmarks go with it: run the command again.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ldl.data.cache import CACHE_ENTRY, LANDMARKS_FILE
from ldl.models.dlib_face import LANDMARKS_FILE as PREDICTOR_FILE, package_file

BOXES = ("detect", "image")
MIN_SIDE = 150


def _load_dlib():
    try:
        import dlib
    except ImportError as err:
        raise FileNotFoundError("ldl landmarks runs dlib's shape predictor: pip install dlib-bin==20.0.1.post1 "
                                "face-recognition-models==0.3.0 (or the project's `face` extra)") from err
    return dlib


class LandmarkPredictor:
    """68 points of one RGB uint8 face crop [H, W, 3] -> float32 [68, 2] (x, y) in its pixels."""

    def __init__(self, box: str = "detect", predictor: str | Path | None = None):
        if box not in BOXES:
            raise ValueError(f"--box must be one of {', '.join(BOXES)}, got {box!r}")
        dlib = _load_dlib()
        self.dlib, self.box, self.detected = dlib, box, 0
        self.path = Path(predictor) if predictor else package_file(PREDICTOR_FILE)
        self.predictor = dlib.shape_predictor(str(self.path))
        self.detector = dlib.get_frontal_face_detector() if box == "detect" else None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        scale = max(1.0, MIN_SIDE / min(h, w))
        if scale > 1:
            from PIL import Image
            image = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
        image = np.ascontiguousarray(image)
        rect = self.dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        if self.detector is not None:
            faces = self.detector(image, 1)
            if len(faces) == 1:
                rect, self.detected = faces[0], self.detected + 1
        shape = self.predictor(image, rect)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        # dlib's points are pixel indices; pixel j covers [j, j + 1) (the synthetic set's convention)
        return (points + 0.5) * np.float32([w / image.shape[1], h / image.shape[0]])


def _entries(cfg: DictConfig, splits: tuple[str, ...]) -> list[Path]:
    """The cache entries a dataset's splits are loaded from (a held-out validation split shares
    its training entry), building them if needed."""
    from omegaconf import OmegaConf

    from ldl.data import build_splits
    from ldl.data.loading import DataError

    plain = OmegaConf.merge(cfg, {"data": {"noise": {"type": "none"}, "va_file": None}})
    folders: list[Path] = []
    for split in splits:
        try:
            data = build_splits(plain, (split,))[split]
        except DataError:
            raise   # a loader's own complaint (a broken label file), never a split to skip
        except ValueError as err:
            if "is empty" in str(err):   # e.g. no held-out validation split
                continue
            raise
        folder = Path(data.info[CACHE_ENTRY])
        if folder not in folders:
            folders.append(folder)
    return folders


def add_landmarks(cfg: DictConfig, splits: tuple[str, ...] = ("train", "val", "test"), box: str = "detect",
                  overwrite: bool = False, progress: bool = True, predictor: str | Path | None = None) -> list[dict]:
    """Predict and store landmarks for every cache entry of the configured dataset; one report
    per entry (images, seconds, images/s, or why it was skipped)."""
    folders = _entries(cfg, splits)
    model = None
    reports = []
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        name = f"{meta['key'].get('dataset')} {meta['key'].get('split')} ({folder.name})"
        own = folder / "arrays.npz"
        with np.load(own, allow_pickle=False) as z:
            shipped = z["landmarks"] if "landmarks" in z.files else None
        todo = (np.arange(meta["count"]) if shipped is None
                else np.flatnonzero(~np.isfinite(shipped).all(axis=(1, 2))))
        if len(todo) == 0:
            reports.append({"entry": name, "images": 0, "skipped": "the dataset ships landmarks for every image"})
            continue
        if (folder / LANDMARKS_FILE).is_file() and not overwrite:
            reports.append({"entry": name, "images": 0, "skipped": f"{LANDMARKS_FILE} exists (--overwrite to redo)"})
            continue
        model = model or LandmarkPredictor(box, predictor)
        images = np.load(folder / "images.npy", mmap_mode="r")
        points = np.full((meta["count"], 68, 2), np.nan, dtype=np.float32)
        detected_before = model.detected
        start = time.perf_counter()
        for i in tqdm(todo, desc=f"landmarks {name}", unit="img", disable=not progress):
            points[i] = model(np.asarray(images[i]))
        seconds = time.perf_counter() - start
        tmp = folder / f".{LANDMARKS_FILE}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, points)
        os.replace(tmp, folder / LANDMARKS_FILE)
        report = {"entry": name, "images": int(len(todo)), "seconds": seconds,
                  "images_per_s": len(todo) / max(seconds, 1e-9), "box": box,
                  "predictor": model.path.name, "upscaled_below_px": MIN_SIDE}
        if box == "detect":
            report["face_detected"] = model.detected - detected_before
        (folder / "landmarks.json").write_text(json.dumps(report, indent=1))
        reports.append(report)
    return reports


def run_command(cfg: DictConfig, args: argparse.Namespace, console) -> int:
    """`ldl landmarks` (its arguments are defined in ldl/cli.py)."""
    reports = add_landmarks(cfg, tuple(args.splits.split(",")), args.box, args.overwrite, cfg.log.progress)
    for r in reports:
        if "skipped" in r:
            console.print(f"{r['entry']}: skipped, {r['skipped']}")
        else:
            detected = f", face found in {r['face_detected']}" if "face_detected" in r else ""
            console.print(f"{r['entry']}: {r['images']} images, {r['seconds']:.1f} s "
                          f"({r['images_per_s']:.0f} images/s{detected})")
    console.print("later runs of this dataset load them (teacher AU proxy, method.ldlva.space=landmarks)")
    return 0
