"""`ldl landmarks`' predictor on synthetic faces, whose true 68 points are known: speed and error.

For each image size and face-box mode: images/s of LandmarkPredictor (one process, as the
command runs it), the mean point error in inter-ocular distances (NME) against the synthetic
truth, the share of faces dlib's HOG detector found, and how well each AU-proxy geometry feature
of the predicted points correlates with the same feature of the true points.  The synthetic faces
are drawn, not photographed: the error is an upper bound for real face crops.

Usage: OMP_NUM_THREADS=1 python benchmarks/landmarks_check.py [--images 300]
Writes benchmarks/results/landmarks_check-<host>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from ldl.data.synthetic import SyntheticSpec, generate_split
from ldl.landmarks import BOXES, LandmarkPredictor
from ldl.teacher.au_proxy import FEATURE_NAMES, geometry_features
from ldl.tracking import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--sizes", default="48,100", help="comma list of image sides (FERPlus 48, RAF-DB 100)")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        data = generate_split(SyntheticSpec(image_size=size, seed=7), "test", args.images)
        truth = data.landmarks
        iod = np.linalg.norm(truth[:, 36:42].mean(1) - truth[:, 42:48].mean(1), axis=1)
        for box in BOXES:
            predictor = LandmarkPredictor(box)
            start = time.perf_counter()
            points = np.stack([predictor(image) for image in data.images])
            seconds = time.perf_counter() - start
            err = np.linalg.norm(points - truth, axis=2) / iod[:, None]
            pred_f, true_f = geometry_features(points), geometry_features(truth)
            rows.append({"image_size": size, "box": box, "images": args.images, "images_per_s": args.images / seconds,
                         "face_detected": predictor.detected / args.images if box == "detect" else None,
                         "nme": float(err.mean()), "nme_jaw": float(err[:, :17].mean()),
                         "nme_inner": float(err[:, 17:].mean()),
                         "feature_correlation": {name: float(np.corrcoef(pred_f[:, j], true_f[:, j])[0, 1])
                                                 for j, name in enumerate(FEATURE_NAMES)}})
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()
                   if k != "feature_correlation"}, flush=True)
    out = Path("benchmarks/results") / f"landmarks_check-{socket.gethostname()}.json"
    out.write_text(json.dumps({"machine": machine(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                               "rows": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
