"""The `ldl` command: train, eval, noise (and the studies' subcommands)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ldl.config import ConfigError, load_config
from ldl.lifeline import follow_parent, sigterm_exits

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
    import gc

    import torch.distributed as dist

    from ldl.fairness import group_tables
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
        # The run's DDP wrapper and its gloo work sit in reference cycles; left to the collector at
        # interpreter exit, gloo's threads free them without the GIL and the process aborts
        # ("terminate called without an active exception", seen on rank 1 of the 2-process test).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    final = {k: v for k, v in summary["final"].items() if isinstance(v, dict)}
    console.print(results_table(f"{summary['method']} on {summary['dataset']} "
                                f"(seed {summary['seed']}, epoch {summary['final']['epoch']})", final))
    for table in group_tables(final.get("test", {}), "test"):
        console.print(table)
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
    from ldl.fairness import group_tables
    from ldl.train import evaluate_checkpoint

    metrics, cfg, epoch = evaluate_checkpoint(Path(args.checkpoint), args.split, overrides=tuple(args.overrides))
    console.print(results_table(f"{Path(args.checkpoint)} on {cfg.data.name} {args.split} (epoch {epoch})",
                                {args.split: metrics}))
    for table in group_tables(metrics, f"{cfg.data.name} {args.split}"):
        console.print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1))
        console.print(f"metrics written to {args.out}")
    return 0


def _noise(args: argparse.Namespace) -> int:
    from ldl.data import build_splits
    from ldl.data.noise import inject, write_noise_file
    from ldl.validate import validate_data

    if (args.rate is None) != (args.type == "annotator"):
        raise ConfigError("ldl noise: --rate is required for symmetric, asymmetric and instance noise; annotator "
                          "noise has none (its rate follows from the label distributions; --temperature moves it)")
    cfg = load_config(args.config, args.overrides)
    validate_data(cfg)
    train = build_splits(cfg, ("train",))["train"]
    noisy = inject(train, args.type, args.rate or 0.0, args.seed, args.temperature, cfg.data.name)
    write_noise_file(Path(args.out), noisy.names, noisy.labels, noisy.clean_labels, noisy.info["noise"])
    report = noisy.info["noise"]
    asked = f"temperature {args.temperature:g}" if args.type == "annotator" else f"at {args.rate:.0%}"
    console.print(f"{args.type} noise {asked}: realised rate {report['realised_rate']:.4f} "
                  f"over {len(noisy)} training samples -> {args.out}")
    if "off_argmax_rate" in report:
        console.print(f"labels off their distribution's argmax: {report['off_argmax_rate']:.4f} "
                      f"(the dataset's own labels: {report['argmax_differs_from_dataset_label']:.4f})")
    console.print(f"use it with: data.noise.type=file data.noise.file={args.out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from ldl.sweep import RUNNING_ELSEWHERE, expand, load_sweep, register_with_wandb, run_local

    spec = load_sweep(Path(args.file))
    if args.wandb:
        sweep_id = register_with_wandb(spec, args.project)
        console.print(f"wandb sweep {sweep_id} created; on each machine run: wandb agent {sweep_id}")
        return 0
    if args.dry_run:
        for run in expand(spec, args.seed):
            console.print(f"{run.run_id}: {' '.join(run.overrides)}")
        return 0
    out = Path(args.out or Path("sweeps") / Path(args.file).stem)
    if args.status:
        return _sweep_status(spec, out, args.seed)
    given = {k: getattr(args, k) for k in ("partition", "time", "gpus", "cpus", "mem")}
    if args.executor == "local":
        if any(v is not None for v in given.values()):
            raise ConfigError("--partition, --time, --gpus, --cpus and --mem are for --executor slurm (or submitit-*)")
        status = run_local(spec, out, args.workers, args.seed)
    else:
        from ldl.executors import run_submitit, slurm_options

        status = run_submitit(spec, out, args.executor, slurm_options(spec, given), args.seed)
    failed = [k for k, v in status.items() if v["state"] == "failed"]
    elsewhere = {k: v["owner"] for k, v in status.items() if v["state"] == RUNNING_ELSEWHERE}
    finished = sum(v["state"] == "finished" for v in status.values())
    queued = sum(v["state"] == "submitted" for v in status.values())  # SLURM jobs submitted earlier, still queued
    console.print(f"{finished} runs finished, {len(failed)} failed, {len(elsewhere)} running elsewhere"
                  + (f", {queued} still queued" if queued else "") + f" -> {out}")
    for run_id in failed:
        console.print(f"[red]failed[/]: {run_id} (see {out / run_id / 'error.txt'})")
    for run_id, owner in elsewhere.items():
        console.print(f"[yellow]running elsewhere[/]: {run_id} (owned by {owner}; left to it)")
    console.print(f"report: ldl report {out}")
    return 1 if failed else 0


def _sweep_status(spec: dict, out: Path, seed: int) -> int:
    from ldl.executors import sweep_status

    states = sweep_status(spec, out, seed)
    table = Table()
    for column in ("run", "state", "detail"):
        table.add_column(column)
    colour = {"pending": "dim", "running": "yellow", "finished": "green", "failed": "red"}
    for s in states:
        table.add_row(escape(s.run_id), f"[{colour[s.state]}]{s.state}[/]", escape(s.detail))
    console.print(table)
    console.print(f"{out}: " + ", ".join(f"{sum(s.state == name for s in states)} {name}"
                                         for name in ("pending", "running", "finished", "failed")))
    for s in states:
        if s.state == "failed":
            console.print(f"[red]failed[/]: {s.run_id}, log {s.log or 'none'}; its last lines:", soft_wrap=True)
            for line in s.tail:
                console.print(f"    {escape(line)}", soft_wrap=True, highlight=False)
    return 0


def _cross(args: argparse.Namespace) -> int:
    from ldl.cross import markdown, run_cross

    out = Path(args.out or Path("cross") / Path(args.plan).stem)
    result = run_cross(Path(args.plan), out)
    console.print(markdown(result))
    console.print(f"written to {out / 'cross.json'}; report: {out / 'cross.md'} and {out / 'cross.html'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ldl.report import build_report

    out = Path(args.out)
    info = build_report([Path(p) for p in args.runs], out)
    repeats = f", {info['repeats']} repeats counted once" if info["repeats"] else ""
    for protocol, rows in info["tables"].items():
        table = Table(title=f"{protocol} protocol: {len(rows)} groups of {info['runs']} runs{repeats} "
                            "(test, last epoch, mean ± std over seeds)")
        for h in info["header"]:
            table.add_column(h)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))  # method labels hold [key=value]
        Console(width=200).print(table)
    console.print(f"report: {out / 'report.md'} and {out / 'report.html'} ({info['figures']} figures)")
    return 0


def _teacher(args: argparse.Namespace) -> int:
    from ldl.teacher import label_dataset, train_teacher

    if args.action == "train":
        report = train_teacher(load_config(args.config, args.overrides), Path(args.dir))
        console.print(f"teacher saved to {Path(args.dir) / 'teacher.pt'}: {report}")
    else:
        if not args.out:
            raise ConfigError("ldl teacher label needs --out (the AffectNet+-layout folder to write)")
        cfg = load_config(args.config, args.overrides) if (args.config or args.overrides) else None
        counts = label_dataset(Path(args.dir), Path(args.out), cfg)
        console.print(f"AffectNet+-layout soft labels written to {args.out}: {counts}")
        noise = f" data.noise.type=file data.noise.file={counts['noise_file']}" if "noise_file" in counts else ""
        console.print(f"train a student: ldl train data.name=affectnet_plus data.root={args.out} method.name=distill{noise}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ldl.bench import METHODS, run_bench

    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    path = run_bench(Path(args.out), tuple(args.sections.split(",")), methods, args.synthetic, args.rafdb,
                     args.knn_sizes, args.knn_budget, args.run_epochs)
    console.print(f"benchmark results written to {path}")
    return 0


def _landmarks(args: argparse.Namespace) -> int:
    from ldl.landmarks import run_command

    return run_command(load_config(args.config, args.overrides), args, console)


def _va(args: argparse.Namespace) -> int:
    from ldl.va import annotate, train_va

    cfg = load_config(args.config, args.overrides)
    if args.action == "train":
        metrics = train_va(cfg, Path(args.dir))
        console.print(f"VA regressor saved to {Path(args.dir) / 'va_regressor.pt'}; validation: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "epoch"))
    else:
        if not args.out:
            raise ConfigError("ldl va annotate needs --out (the CSV to write)")
        rows = annotate(Path(args.dir), cfg, Path(args.out))
        console.print(f"pseudo-VA for {rows} samples written to {args.out}; use it with data.va_file={args.out}")
    return 0


def _int_list(text: str) -> list[int]:
    """argparse type for a comma list of positive integers (argparse names the option on error)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return values


def _train_then_apply(sub, name: str, help: str, actions: tuple[str, str], dir_help: str, out_help: str,
                      overrides_help: str, func) -> None:
    """A subcommand whose first action trains something into DIR and whose second applies it."""
    p = sub.add_parser(name, help=help)
    p.add_argument("action", choices=list(actions))
    p.add_argument("dir", help=f"{dir_help} (written by {actions[0]}, read by {actions[1]})")
    p.add_argument("-c", "--config")
    p.add_argument("--out", help=out_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=func)


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
    p.add_argument("--type", required=True, choices=["symmetric", "asymmetric", "instance", "annotator"])
    p.add_argument("--rate", type=float, help="symmetric / asymmetric / instance: the share of labels to corrupt")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="annotator: draw from q^(1/T); < 1 sharpens (fewer flips), > 1 flattens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_noise)

    _train_then_apply(sub, "va", "pseudo valence-arousal: train a VA regressor, or annotate a dataset",
                      ("train", "annotate"), "regressor folder", "annotate: CSV name,valence,arousal to write",
                      "train: the VA dataset; annotate: the dataset to annotate", _va)
    _train_then_apply(sub, "teacher", "AffectNet+-style soft-label teacher: train it, or label a dataset",
                      ("train", "label"), "teacher folder", "label: folder to write in the AffectNet+ layout",
                      "train: dotted overrides; label: the dataset to label", _teacher)

    p = sub.add_parser("bench", help="speed and memory: our loop vs the raw model step, k-NN, cache, loader")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--sections", default="train,knn,cache,run", help="comma list of train, knn, cache, run")
    p.add_argument("--methods", help="comma list (default: every method; ldlva:faithful for the faithful mode)")
    p.add_argument("--synthetic", type=int, default=100_000, help="images in the synthetic cache benchmark")
    p.add_argument("--rafdb", type=int, default=12_271, help="training JPEGs in the RAF-DB-layout cache benchmark")
    p.add_argument("--knn-sizes", type=_int_list, help="comma list of N for the k-NN section (default: "
                                                       "12271,50000 on CPU; up to 287651 on a GPU)")
    p.add_argument("--knn-budget", type=float, default=300,
                   help="seconds: skip a k-NN backend at a size whose extrapolated time exceeds this")
    p.add_argument("--run-epochs", type=int, help="epochs of the end-to-end run (default 60 on a GPU, 2 on CPU)")
    p.set_defaults(func=_bench)

    p = sub.add_parser("landmarks", help="68 dlib landmarks for a dataset's cached images (datasets that ship none)")
    p.add_argument("-c", "--config", help="the dataset's config, e.g. experiments/rafdb/base.yaml")
    p.add_argument("--splits", default="train,val,test", help="comma list of splits whose cache entries to cover")
    p.add_argument("--box", default="detect", choices=["detect", "image"],
                   help="face box: dlib's HOG detector's where it finds one face (else the whole image), "
                        "or always the whole (cropped) image (faster)")
    p.add_argument("--overwrite", action="store_true", help="predict again where landmarks are stored")
    p.add_argument("overrides", nargs="*", help="e.g. data.name=rafdb data.root=/data/raf-basic")
    p.set_defaults(func=_landmarks)

    p = sub.add_parser("sweep", help="run a wandb-format sweep file here or on SLURM (or register it with wandb)")
    p.add_argument("file")
    p.add_argument("--workers", type=int, help="runs at a time (default: one per GPU, else 1)")
    p.add_argument("--out", help="sweep folder (default sweeps/<file stem>)")
    p.add_argument("--seed", type=int, default=0, help="seed of a random sweep's draws")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--wandb", action="store_true", help="create a real wandb sweep for agents instead")
    p.add_argument("--project", default="ldl")
    p.add_argument("--status", action="store_true", help="list each run as pending / running / finished / failed")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local", "submitit-debug"],
                   help="local: runs at a time on this machine; slurm: a SLURM job per run (submitit); "
                        "submitit-local / submitit-debug: the SLURM job's code path on this machine")
    p.add_argument("--partition", help="SLURM partition (overrides the sweep file's slurm: block)")
    p.add_argument("--time", help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (a run that hits it "
                                  "is requeued and resumes)")
    p.add_argument("--gpus", type=int, help="GPUs per run and node (one process each)")
    p.add_argument("--cpus", type=int, help="CPUs per process")
    p.add_argument("--mem", help="memory per node, e.g. 64G")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("cross", help="cross-dataset matrix: train on each dataset, test on the others (7 classes)")
    p.add_argument("plan")
    p.add_argument("--out", help="folder (default cross/<plan stem>)")
    p.set_defaults(func=_cross)

    p = sub.add_parser("report", help="report.md + self-contained report.html from run folders")
    p.add_argument("runs", nargs="+", help="run, sweep or cross folders (searched for summary.json)")
    p.add_argument("--out", default="report")
    p.set_defaults(func=_report)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    # Overrides may also follow options (`ldl va annotate DIR --out x.csv data.name=rafdb`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    follow_parent()
    try:
        with sigterm_exits():
            return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError, FileExistsError) as err:  # SweepError, DataError too
        # one line, as given: never wrapped, and brackets in it (eval.splits=[x]) are not markup
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
