"""The `ldl` command: train, eval, noise (and the studies' subcommands)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ldl.config import ConfigError, load_config, parse_override

console = Console(width=120)
MAIN_METRICS = {"accuracy": "acc", "mean_class_accuracy": "mean-class acc", "macro_f1": "macro-F1",
                "ece": "ECE", "nll": "NLL", "kl": "KL(true||pred)", "intersection": "intersection"}


def results_table(title: str, rows: dict[str, dict]) -> Table:
    table = Table(title=title)
    table.add_column("split")
    present = [m for m in MAIN_METRICS if any(m in r for r in rows.values())]
    for metric in present:
        table.add_column(MAIN_METRICS[metric], justify="right")
    for split, metrics in rows.items():
        table.add_row(split, *(f"{metrics[m]:.4f}" if m in metrics else "-" for m in present))
    return table


def _train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ldl.train import init_distributed, run_training

    init_distributed()
    if args.resume:
        if args.overrides or args.config:
            raise ConfigError("--resume continues a run with its saved config; give no config or overrides")
        summary = run_training(None, resume_dir=Path(args.resume))
    else:
        summary = run_training(load_config(args.config, args.overrides))
    if dist.is_initialized():
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    final = {k: v for k, v in summary["final"].items() if isinstance(v, dict)}
    console.print(results_table(f"{summary['method']} on {summary['dataset']} "
                                f"(seed {summary['seed']}, epoch {summary['final']['epoch']})", final))
    best = summary["best_val"]
    if best.get("epoch") and "test" in best:
        console.print(f"best validation epoch {best['epoch']}: val accuracy {best['val_accuracy']:.4f}, "
                      f"test accuracy {best['test']['accuracy']:.4f}")
    for split, ceiling in summary["ceiling"].items():
        if split == "test":
            console.print(f"task ceiling on test (Bayes accuracy vs drawn labels): {ceiling['bayes_accuracy']:.4f}")
    for key, scores in summary["noise_detection"].items():
        if key == "label_recovery":
            console.print(f"label recovery: {scores['accuracy']:.4f} of mined labels are clean "
                          f"(given labels: {scores['given_label_accuracy']:.4f})")
        else:
            console.print(f"noise detection by {key}: AUROC {scores['noise_auroc']:.4f}")
    console.print(f"run folder: {summary['run_dir']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ldl import checkpoint
    from ldl.config import config_from_dict
    from ldl.data import build_splits
    from ldl.engine import evaluate
    from ldl.train import Job, seed_everything

    state = checkpoint.load(Path(args.checkpoint))
    cfg = config_from_dict(state["config"])
    for text in args.overrides:
        cfg = load_config_with(cfg, text)
    seed_everything(cfg.seed, cfg.deterministic)
    splits = build_splits(cfg, (args.split,))
    job = Job(cfg, splits, num_train=state["num_train"])
    job.load_state(state, weights_only=True)
    metrics = evaluate(job.net, job.method, job.eval_loader(args.split), job.device, cfg.amp, cfg.eval.ece_bins)
    console.print(results_table(f"{Path(args.checkpoint)} on {cfg.data.name} {args.split} (epoch {state['epoch']})",
                                {args.split: metrics}))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1))
        console.print(f"metrics written to {args.out}")
    return 0


def load_config_with(cfg, text: str):
    """Apply one dotted override to an existing config, checked like any other."""
    from omegaconf import OmegaConf

    from ldl.config import config_from_dict

    key, value = parse_override(text)
    data = OmegaConf.to_container(cfg, resolve=True)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override '{text}': unknown config key '{key}'")
        node = node[part]
    if parts[-1] not in node:
        load_config(None, [text])  # raises with the closest valid key
    node[parts[-1]] = value
    return config_from_dict(data)


def _noise(args: argparse.Namespace) -> int:
    from ldl.data import build_splits
    from ldl.data.noise import inject, write_noise_file

    cfg = load_config(args.config, args.overrides)
    train = build_splits(cfg, ("train",))["train"]
    noisy = inject(train, args.type, args.rate, args.seed)
    write_noise_file(Path(args.out), noisy)
    report = noisy.info["noise"]
    console.print(f"{args.type} noise at {args.rate:.0%}: realised rate {report['realised_rate']:.4f} "
                  f"over {len(noisy)} training samples -> {args.out}")
    console.print(f"use it with: data.noise.type=file data.noise.file={args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldl", description="Uncertainty-aware label-distribution learning for facial expression recognition.",
        epilog="Examples:\n  ldl train                                  # CE on the synthetic set\n"
               "  ldl train -c experiments/synthetic/ce.yaml optim.epochs=5\n"
               "  ldl train --resume runs/synthetic-ce-s0-20260101-120000\n"
               "  ldl eval runs/<run>/checkpoint.pt --split test",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (config file + dotted overrides)")
    p.add_argument("-c", "--config", help="YAML config (inherits with _base_); default: package defaults")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 model.arch=resnet50")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its latest checkpoint")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    p.add_argument("checkpoint")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("overrides", nargs="*", help="e.g. data.name=rafdb data.root=/data/raf-basic")
    p.set_defaults(func=_eval)

    p = sub.add_parser("noise", help="write a noisy-label file for a dataset's training split")
    p.add_argument("-c", "--config")
    p.add_argument("--type", required=True, choices=["symmetric", "asymmetric", "instance"])
    p.add_argument("--rate", required=True, type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_noise)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, FileExistsError) as err:
        console.print(f"[bold red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
