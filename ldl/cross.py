"""`ldl cross PLAN`: train on each listed dataset, evaluate on every other in the shared
7-class space; the matrix has the in-domain diagonal and the mean off-diagonal, like the
cross-dataset tables of FER papers.  Where a test set has demographic groups, matrices of the
gaps between its groups follow, per attribute (ldl.fairness).

Plan file:
    image_size: 48
    overrides: [method.name=ce, optim.epochs=8]        # for every training run
    datasets:
      synthetic: {config: experiments/synthetic/quickstart.yaml}
      ferplus:   {overrides: [data.name=ferplus, data.root=/data/ferplus]}
    similarity: {metric: macro_f1}                      # optional: ldl/transfer.py

Beside cross.json it writes cross.md and cross.html: the matrix, the measures that explain it
(ldl/transfer.py, ldl/similarity.py) and their figures (ldl/cross_report.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

from ldl import cross_report, transfer
from ldl.config import flatten, load_config
from ldl.group_report import cross_gap_matrices, cross_markdown
from ldl.report import start_label
from ldl.train import evaluate_checkpoint, run_training


def load_plan(path: Path) -> dict:
    plan = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(plan.get("datasets"), dict) or len(plan["datasets"]) < 2:
        raise ValueError(f"{path}: 'datasets' must name at least two datasets")
    transfer.settings(plan.get("similarity"))   # a typo there fails before any training
    return plan


def _dataset_config(plan: dict, entry: dict, base_dir: Path):
    config = entry.get("config")
    overrides = [*plan.get("overrides", []), *entry.get("overrides", []), "data.num_classes=7",
                 f"data.image_size={plan.get('image_size', 48)}"]
    return load_config(base_dir / config if config else None, overrides)


def run_cross(plan_path: Path, out_dir: Path, base_dir: Path = Path(".")) -> dict:
    plan = load_plan(plan_path)
    names = list(plan["datasets"])
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = {n: _dataset_config(plan, plan["datasets"][n], base_dir) for n in names}
    checkpoints = {}
    for name in names:
        run_dir = out_dir / f"train-{name}"
        if not (run_dir / "summary.json").is_file():
            cfg = configs[name]
            cfg.run.dir = str(run_dir)
            if (run_dir / "checkpoint.pt").is_file():
                run_training(None, resume_dir=run_dir)
            else:
                run_training(cfg)
        checkpoints[name] = run_dir / "checkpoint.pt"
    acc = np.zeros((len(names), len(names)))
    mca, f1 = np.zeros_like(acc), np.zeros_like(acc)
    groups = [[{} for _ in names] for _ in names]   # per-group metrics where the test set has groups
    for i, train in enumerate(names):
        for j, test in enumerate(names):
            data = OmegaConf.to_container(configs[test].data, resolve=True)
            metrics, _, _ = evaluate_checkpoint(checkpoints[train], "test", data_section=data)
            acc[i, j], mca[i, j], f1[i, j] = metrics["accuracy"], metrics["mean_class_accuracy"], metrics["macro_f1"]
            groups[i][j] = metrics.get("groups", {})
    off = ~np.eye(len(names), dtype=bool)
    result = {"datasets": names, "space": "7 classes (Contempt dropped)", "epoch": "last",
              "accuracy": acc.round(4).tolist(), "mean_class_accuracy": mca.round(4).tolist(),
              "macro_f1": f1.round(4).tolist(),
              "in_domain": dict(zip(names, np.diag(acc).round(4).tolist())),
              "mean_off_diagonal": float(acc[off].mean()),
              "mean_off_diagonal_per_train": dict(zip(names, [float(acc[i][off[i]].mean()) for i in range(len(names))])),
              "groups": cross_gap_matrices(names, groups)}
    result["training"] = "; ".join(sorted({
        f"{cfg.method.name}, {cfg.protocol} protocol, from {start_label(flatten(OmegaConf.to_container(cfg)))}"
        for cfg in configs.values()}))
    run_dirs = {name: out_dir / f"train-{name}" for name in names}
    result["transfer"] = transfer.explain(result, configs, run_dirs, plan.get("similarity"))
    (out_dir / "cross.json").write_text(json.dumps(result, indent=1))
    cross_report.write(result, out_dir, Path(plan_path).stem)
    return result


def markdown(result: dict) -> str:
    names = result["datasets"]
    lines = ["| train \\ test | " + " | ".join(names) + " | mean off-diagonal |",
             "|---|" + "---|" * (len(names) + 1)]
    for i, name in enumerate(names):
        cells = [f"**{v:.2%}**" if i == j else f"{v:.2%}" for j, v in enumerate(result["accuracy"][i])]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['mean_off_diagonal_per_train'][name]:.2%} |")
    lines.append(f"\nMean off-diagonal accuracy: {result['mean_off_diagonal']:.2%} ({result['space']}, "
                 f"{result['epoch']} epoch" + (f"; trained by {result['training']}" if "training" in result else "") + ").")
    return "\n".join(lines) + cross_markdown(result)
