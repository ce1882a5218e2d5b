"""Exact k=8 neighbour search (k+1 candidates incl. self) per backend and size, written to
benchmarks/results/neighbors-<machine>.json.  Usage: python benchmarks/neighbors.py [--sizes 12271 287651]"""
from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import numpy as np
import torch

from ldl.neighbors import available_backends, knn
from ldl.tracking import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[12271, 287651])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 512])
    parser.add_argument("--max-seconds", type=float, default=600, help="skip a backend once one run exceeds this")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for dim in args.dims:
        for n in args.sizes:
            points = rng.uniform(-1, 1, (n, dim)).astype(np.float32)
            for backend in available_backends():
                start = time.perf_counter()
                knn(points, 8, backend)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                rows.append({"backend": backend, "n": n, "dim": dim, "seconds": round(seconds, 3)})
                print(rows[-1], flush=True)
    out = Path(__file__).parent / "results" / f"neighbors-{socket.gethostname()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "k": 8, "results": rows}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
