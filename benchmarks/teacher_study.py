"""Issue 7's measurements on the synthetic set (where the true distributions are known):
teacher soft labels vs the truth (KL, intersection) against one-hot labels and label smoothing;
Spearman correlation of the subset with true ambiguity; distilled students vs CE, clean and at
30 % symmetric noise, 3 seeds.  Writes benchmarks/results/teacher_study-<host>.json.

Usage: python benchmarks/teacher_study.py [--config experiments/synthetic/study.yaml] [--ce-runs DIR ...]
"""
from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ldl.config import load_config
from ldl.data import build_splits
from ldl.metrics import distribution_metrics
from ldl.teacher import label_dataset, train_teacher
from ldl.tracking import machine
from ldl.train import run_training


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="experiments/synthetic/study.yaml")
    parser.add_argument("--work", default="sweeps/teacher_study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    work = Path(args.work)
    results: dict = {"machine": machine(), "config": args.config, "conditions": {}}
    for rate in (0.0, 0.3):
        noise = ["data.noise.type=symmetric", f"data.noise.rate={rate}"] if rate else []
        cfg = load_config(args.config, ["log.progress=false", *noise])
        teacher_dir, labelled = work / f"teacher-r{rate}", work / f"affectnet_plus-r{rate}"
        if not (teacher_dir / "teacher.pt").is_file():
            train_teacher(cfg, teacher_dir)
        if not labelled.is_dir():
            label_dataset(teacher_dir, labelled, cfg)
        truth = build_splits(cfg, ("train", "test"))
        student_cfg = ["data.name=affectnet_plus", f"data.root={labelled}", "method.name=distill"]
        plus = build_splits(load_config(args.config, ["log.progress=false", *student_cfg]), ("test",))["test"]
        order = np.argsort([int(n.split("_")[1]) for n in plus.names])   # test_000123 -> 123
        soft = plus.soft[order][:, : cfg.data.num_classes]
        q = truth["test"].dist
        onehot = np.eye(cfg.data.num_classes)[truth["test"].labels]
        smooth = 0.9 * onehot + 0.1 / cfg.data.num_classes
        condition = {
            "teacher_vs_truth": distribution_metrics(q, soft),
            "onehot_vs_truth": distribution_metrics(q, onehot),
            "label_smoothing_vs_truth": distribution_metrics(q, smooth),
            "subset_counts": np.bincount(plus.subset, minlength=3).tolist(),
            "spearman_subset_vs_true_ambiguity": float(spearmanr(
                plus.subset[order], 1 - q[np.arange(len(q)), truth["test"].labels]).correlation),
            "students": {}, "ce": {},
        }
        for seed in args.seeds:
            for kind, overrides in (("students", student_cfg), ("ce", noise)):
                run_dir = work / f"{kind}-r{rate}-s{seed}"
                if not (run_dir / "summary.json").is_file():
                    run_training(load_config(args.config, [*overrides, f"seed={seed}", f"run.dir={run_dir}",
                                                           "log.progress=false"]))
                summary = json.loads((run_dir / "summary.json").read_text())
                condition[kind][seed] = summary["final"]["test"]["accuracy"]
        for kind in ("students", "ce"):
            acc = list(condition[kind].values())
            condition[f"{kind}_mean_std"] = [float(np.mean(acc)), float(np.std(acc, ddof=1))]
        results["conditions"][f"symmetric {rate:.0%}"] = condition
        print(json.dumps({k: v for k, v in condition.items() if k not in ("students", "ce")}, indent=1), flush=True)
    out = Path(__file__).parent / "results" / f"teacher_study-{socket.gethostname()}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
