"""Issue 8's cross-dataset measurement: the synthetic set against a RAF-DB-format dataset
written to disk (label file + 100x100 aligned JPEGs) from another synthetic world (seed 7:
other identities, poses and lighting, JPEG compression, rendered at 100 px), so the loader,
the cache and the 7-class protocol all run on real files.  Writes
benchmarks/results/cross_study-<host>.json and prints the matrix.

Usage: python benchmarks/cross_study.py [--train 3000] [--test 1500]
"""
from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import yaml

from ldl.cross import markdown, run_cross
from ldl.data.rafdb import write_rafdb
from ldl.data.synthetic import SyntheticSpec, generate_split
from ldl.tracking import machine


def write_rafdb_world(root: Path, n_train: int, n_test: int) -> None:
    spec = SyntheticSpec(num_classes=7, image_size=100, seed=7)
    splits = {split: generate_split(spec, split, n) for split, n in (("train", n_train), ("test", n_test))}
    write_rafdb(root, {split: (data.images, data.labels) for split, data in splits.items()}, quality=85)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1500)
    parser.add_argument("--work", default="sweeps/cross_study")
    args = parser.parse_args()
    work = Path(args.work)
    raf = work / "raf-basic"
    if not (raf / "EmoLabel" / "list_patition_label.txt").is_file():
        write_rafdb_world(raf, args.train, args.test)
    plan = {"image_size": 48,
            "overrides": ["method.name=ce", "log.progress=false", "log.wandb=disabled"],
            "datasets": {"synthetic": {"config": "experiments/synthetic/study.yaml"},
                         "rafdb-format": {"config": "experiments/synthetic/study.yaml",
                                          "overrides": ["data.name=rafdb", f"data.root={raf}"]}}}
    plan_path = work / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan, sort_keys=False))
    result = run_cross(plan_path, work / "cross")
    print(markdown(result))
    out = Path(__file__).parent / "results" / f"cross_study-{socket.gethostname()}.json"
    out.write_text(json.dumps({"machine": machine(), "plan": plan, "result": result}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
