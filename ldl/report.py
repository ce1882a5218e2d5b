"""`ldl report RUNS...`: report.md and a self-contained report.html from run folders.

Runs are grouped by (dataset, protocol, method, noise type, realised noise rate) and by every
other setting of their resolved config.yaml that differs between runs of the same method and protocol (an LDLVA mode, a
pretrained start, a learning rate), which then names the row, e.g. "ldlva [mode=faithful]";
only the replicate keys (seed, data.noise.seed) and bookkeeping (run, log, device) are pooled.
Noise is told by what the labels are, not by what was asked: the realised rate (the share of
training labels that differ from the clean ones, saved in summary.json) averaged over the seeds
of one noise setting and rounded to whole percent (one decimal below 0.5 %), so `file 32%` or
`annotator 28%`; symmetric noise at 0.3 realises round(0.3 N) / N and still reads `symmetric 30%`.
A run is `clean` only when none of its labels differs.  Settings of one noise type that land on
the same rounded rate (two label files at 32 %) share a row.
Runs repeated with the same config and seeds are counted once.  Groups are summarised over
seeds as mean ± std.  Each protocol (`shared`: one recipe for every method; `paper`: each method
with its authors' recipe) has its own table, named in its caption.  Every table names the epoch
it reports: the last epoch, and the test accuracy at the epoch of best validation accuracy.
Figures: memorisation curves per noise setting (the fit of noisy and of clean training labels,
the noise-score AUROC and test accuracy per epoch, mean ± band over seeds), the noise's
transition matrix per noisy setting (clean label by given label, row-normalised), accuracy against
realised noise rate per method, the
cross-dataset heat map (when a cross.json is among the inputs), confusion matrices, histograms
of each method's noise score for clean and noisy samples, and reliability diagrams.
Runs with demographic groups add a table and a bar figure per attribute (ldl.group_report).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldl.config import flatten, read_yaml  # noqa: E402
from ldl.data.labels import CLASSES  # noqa: E402
from ldl.data.noise import made_by_label  # noqa: E402
from ldl.models import SELF_LOADING  # noqa: E402

METRICS = [("accuracy", "acc"), ("mean_class_accuracy", "mean-class acc"), ("macro_f1", "macro-F1"),
           ("ece", "ECE"), ("kl", "KL")]


def find_runs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    runs, crosses = [], []
    for path in paths:
        runs += sorted(p.parent for p in Path(path).rglob("summary.json"))
        crosses += sorted(Path(path).rglob("cross.json"))
    return sorted(set(runs)), crosses


REPLICATE_KEYS = ("seed", "data.noise.seed")
PROTOCOL_CAPTIONS = {
    "shared": "Protocol `shared`: one recipe (optimiser, learning rate, batch, augmentation, schedule) for every method.",
    "paper": "Protocol `paper`: each method with its authors' recipe (optimiser, per-group learning rates, batch, "
             "augmentation, schedule shape scaled to the run); CE and label smoothing keep the shared recipe.",
}


class GroupKey(NamedTuple):
    dataset: str
    protocol: str
    method: str        # the method's label, with the settings that tell its variants apart
    noise_type: str
    rate: float

    def title(self) -> str:
        return f"{self.method} on {self.dataset}, {noise_label(self.noise_type, self.rate)}, {self.protocol} protocol"


def noise_label(noise_type: str, rate: float) -> str:
    """'clean', or the type and realised rate: 'file 32%' (one decimal below 0.5 %)."""
    if noise_type == "none":
        return "clean"
    return f"{noise_type} {rate:.0%}" if rate >= 0.005 else f"{noise_type} {rate:.1%}"


BOOKKEEPING_SECTIONS = ("run", "log", "device")


def _setting(run: Path, method: str) -> dict[str, object]:
    """The run's settings that can change its numbers: its resolved config without replicate
    keys, bookkeeping, and the sub-configs of methods it does not run."""
    setting = {}
    for key, value in flatten(read_yaml(run / "config.yaml")).items():
        parts = key.split(".")
        other_method = parts[0] == "method" and len(parts) > 2 and parts[1] != method
        if key not in REPLICATE_KEYS and parts[0] not in BOOKKEEPING_SECTIONS and not other_method:
            setting[key] = json.dumps(value) if isinstance(value, list) else value
    return setting


def start_label(config: dict) -> str:
    """Where a run's weights started, from its flattened config: random weights, a pretrained file,
    or the weights a self-loading backbone ships (dlib_face with no model.pretrained)."""
    pretrained, arch = config.get("model.pretrained"), config.get("model.arch")
    if pretrained:
        return f"pretrained weights ({pretrained})"
    return f"{arch}'s own pretrained weights" if arch in SELF_LOADING else "random weights"


def _protocol(summary: dict) -> str:
    return summary.get("protocol", "shared")   # runs from before the protocols were all shared


def _noise(summary: dict) -> tuple[str, float]:
    """(type, realised rate) of a run's training labels, ("none", 0.0) when none differs from its
    clean label.  Summaries without a realised rate (older runs) give the configured one.
    A noise file names the noise that made it where it says so, e.g. `file (annotator T=2)`.
    Group-dependent noise names its asked rate per group in the type, e.g. `symmetric (skin_tone
    dark 40% / light 10%)`, so that it never shares a row with uniform noise of the same rate."""
    noise = summary.get("noise") or {}
    rate = float(noise.get("realised_rate", noise.get("rate", 0.0)))
    kind = noise.get("type", "none")
    if noise.get("made_by"):
        kind += f" ({made_by_label(noise['made_by'])})"
    if noise.get("by_group"):
        by_group = noise["by_group"]
        kind += f" ({by_group['attribute']} " + " / ".join(f"{g} {e['rate']:.0%}" for g, e in by_group["groups"].items()) + ")"
    return (kind, rate) if rate > 0 else ("none", 0.0)


def _setting_noise(runs: list[Path], summaries: dict[Path, dict]) -> tuple[str, float]:
    """The noise of one setting's runs (they differ in seeds only): the mean realised rate,
    rounded so that seeds of one setting never split over two rows."""
    noises = [_noise(summaries[run]) for run in runs]
    rate = float(np.mean([r for _, r in noises]))
    types = {t for t, _ in noises if t != "none"}
    if rate == 0 or len(types) != 1:   # several types in one setting cannot happen: its config fixes the type
        return "none", 0.0
    return types.pop(), round(rate, 2) if rate >= 0.005 else round(rate, 3)


def _variant_labels(settings: dict[Path, dict], summaries: dict[Path, dict]) -> dict[Path, str]:
    """'method [key=value, ...]' where runs of one method on one dataset under one protocol
    differ in `key` (the noise settings have their own column, the protocol its own table)."""
    families: dict[tuple, list[Path]] = defaultdict(list)
    for run, summary in summaries.items():
        families[(summary["dataset"], _protocol(summary), summary["method"])].append(run)
    labels = {}
    for (_, _, method), runs in families.items():
        keys = sorted(k for k in {k for r in runs for k in settings[r]} - {"protocol"} if not k.startswith("data.noise."))
        varying = [k for k in keys if len({repr(settings[r].get(k, "-")) for r in runs}) > 1]
        for run in runs:
            shown = ", ".join(f"{k.removeprefix(f'method.{method}.')}={settings[run].get(k, '-')}" for k in varying)
            labels[run] = f"{method} [{shown}]" if shown else method
    return labels


def _natural_order(key: GroupKey) -> tuple:
    """Sort numbers inside row labels by value: lambda_lr=10.0 before lambda_lr=40.0 and 160.0.
    re.split with one capture group alternates text and number, so equal positions compare
    like with like."""
    parts = re.split(r"(\d+(?:\.\d+)?)", key.method)
    label = [float(p) if i % 2 else p for i, p in enumerate(parts)]
    return (key.protocol != "shared", key.dataset, label, key.noise_type, key.rate)


def group_runs(runs: list[Path], summaries: dict[Path, dict]) -> tuple[dict[GroupKey, list[Path]], list[Path]]:
    """Runs by GroupKey (dataset, protocol, method label, noise type, realised noise rate), in
    report order; also the runs left out as repeats of a run with the same settings and replicate keys."""
    settings = {run: _setting(run, summaries[run]["method"]) for run in runs}
    labels = _variant_labels(settings, summaries)
    by_setting: dict[tuple, list[Path]] = defaultdict(list)
    seen, repeats = set(), []
    for run in runs:
        summary = summaries[run]
        noise_seed = (summary.get("noise") or {}).get("seed")
        frozen = tuple(sorted((k, repr(v)) for k, v in settings[run].items()))
        identity = (summary["dataset"], summary["method"], summary["seed"], noise_seed, frozen)
        if identity in seen:
            repeats.append(run)
            continue
        seen.add(identity)
        by_setting[(summary["dataset"], _protocol(summary), labels[run], frozen)].append(run)
    groups: dict[GroupKey, list[Path]] = defaultdict(list)
    for (dataset, protocol, label, _), members in by_setting.items():
        groups[GroupKey(dataset, protocol, label, *_setting_noise(members, summaries))] += members
    return dict(sorted(groups.items(), key=lambda item: _natural_order(item[0]))), repeats


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _noise_auroc(summary: dict) -> float | None:
    detection = summary.get("noise_detection") or {}
    key = "noise_score" if "noise_score" in detection else "model_noise_score"
    return detection.get(key, {}).get("noise_auroc")


def _final_noisy_fit(run: Path) -> float | None:
    """The share of the noise-changed training labels the model predicts at the last epoch."""
    series = _epoch_series(run).get("fit_noisy")
    return series[-1] if series else None


def _figure_to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _accuracy_vs_noise(groups: dict[GroupKey, list[dict]], protocol: str) -> str | None:
    """One curve per (dataset, method, noise type) of one protocol, each point at its realised
    rate (a label file or annotator noise too); the clean runs are every curve's 0 % point."""
    groups = {k: v for k, v in groups.items() if k.protocol == protocol}
    clean = {(k.dataset, k.method): [s["final"]["test"]["accuracy"] for s in ss]
             for k, ss in groups.items() if k.noise_type == "none"}
    by_rate: dict[tuple, dict] = defaultdict(dict)
    for key, summaries in groups.items():
        if key.noise_type != "none":
            by_rate[(key.dataset, key.method, key.noise_type)][key.rate] = [s["final"]["test"]["accuracy"] for s in summaries]
    for (dataset, method, ntype), points in by_rate.items():
        if (dataset, method) in clean:
            points[0.0] = clean[(dataset, method)]
    if not by_rate:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (dataset, method, ntype), points in sorted(by_rate.items()):
        rates = sorted(points)
        means = [np.mean(points[r]) for r in rates]
        stds = [np.std(points[r]) for r in rates]
        ax.errorbar([100 * r for r in rates], means, yerr=stds, marker="o", capsize=3,
                    label=f"{method} ({dataset}, {ntype})")
    ax.set_xlabel("realised noise rate (%): training labels that differ from the clean ones")
    ax.set_ylabel("test accuracy (last epoch)")
    ax.set_title(f"{protocol} protocol", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _figure_to_base64(fig)


MEMORISATION_PANELS = (("fit_noisy", "noisy samples predicted as their given (wrong) label"),
                       ("fit_clean", "clean samples predicted as their label"),
                       ("auroc_noise_score", "noise AUROC of the method's own score"),
                       ("test_accuracy", "test accuracy"))


def _epoch_series(run: Path) -> dict[str, list[float]]:
    """Per-epoch values of the memorisation panels from a run's metrics.jsonl; the own-score
    AUROC falls back to the small-loss score's for methods without one."""
    series: dict[str, list[float]] = defaultdict(list)
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        fit = record.get("train_pass", {})
        own = fit.get("auroc_noise_score", fit.get("auroc_model_noise_score"))
        for key, value in (("fit_noisy", fit.get("fit_noisy")), ("fit_clean", fit.get("fit_clean")),
                           ("auroc_noise_score", own), ("test_accuracy", record.get("test", {}).get("accuracy"))):
            series[key].append(np.nan if value is None else value)
    return series


def _memorisation(run_groups: dict[GroupKey, list[Path]], setting: tuple) -> str | None:
    """Per-epoch curves of every method in one (dataset, protocol, noise type, rate) setting,
    mean and a ± std band over seeds."""
    dataset, protocol, ntype, rate = setting
    members = {k.method: runs for k, runs in run_groups.items()
               if (k.dataset, k.protocol, k.noise_type, k.rate) == setting}
    curves = {}
    for method, runs in members.items():
        series = [_epoch_series(run) for run in runs]
        if not series or all(np.isnan(s.get("fit_noisy", [np.nan])).all() for s in series):
            continue
        length = min(len(s["test_accuracy"]) for s in series)
        curves[method] = {key: np.array([s[key][:length] for s in series], dtype=float) for key, _ in MEMORISATION_PANELS}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(MEMORISATION_PANELS), figsize=(4.2 * len(MEMORISATION_PANELS), 3.6))
    for ax, (key, label) in zip(axes, MEMORISATION_PANELS):
        for method, values in curves.items():
            epochs = np.arange(1, values[key].shape[1] + 1)
            mean, std = np.nanmean(values[key], 0), np.nanstd(values[key], 0)
            ax.plot(epochs, mean, label=method)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{dataset}, {noise_label(ntype, rate)}, {protocol} protocol (mean ± std over seeds)", fontsize=9)
    return _figure_to_base64(fig)


def _transition(summaries: list[dict], title: str) -> str | None:
    """The noise's transition matrix (clean label by given label, each row normalised), the
    mean over the runs of one setting (their seeds may draw different noise)."""
    matrices = [np.array(s["noise"]["transition_matrix"], dtype=float) for s in summaries
                if (s.get("noise") or {}).get("transition_matrix")]
    if not matrices:
        return None
    return _class_heatmap(np.mean(matrices, 0), "Oranges", "given (training) label", "clean label",
                          f"{title}\nrow-normalised, mean over {len(matrices)} run(s)")


def _confusion(summary: dict, title: str) -> str:
    cm = np.array(summary["final"]["test"]["confusion_matrix"], dtype=float)
    return _class_heatmap(cm / np.maximum(cm.sum(1, keepdims=True), 1), "Blues", "predicted", "true", title)


def _class_heatmap(matrix: np.ndarray, cmap: str, xlabel: str, ylabel: str, title: str) -> str:
    """A class-by-class matrix of fractions in [0, 1], each cell written in."""
    names = CLASSES[: len(matrix)]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if matrix[i, j] > 0.5 else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    return _figure_to_base64(fig)


def _uncertainty_histogram(run: Path, title: str) -> str | None:
    path = run / "samples.csv"
    if not path.is_file():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows or "clean_label" not in rows[0]:
        return None
    key = "noise_score" if "noise_score" in rows[0] else "model_noise_score"
    score = np.array([float(r[key]) for r in rows])
    noisy = np.array([r["label"] != r["clean_label"] for r in rows])
    if not noisy.any():
        return None
    fig, ax = plt.subplots(figsize=(4.2, 3))
    bins = np.linspace(score.min(), score.max() + 1e-9, 40)
    ax.hist(score[~noisy], bins=bins, alpha=0.6, density=True, label="clean")
    ax.hist(score[noisy], bins=bins, alpha=0.6, density=True, label="noisy")
    ax.set_xlabel(key.replace("_", " "))
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    return _figure_to_base64(fig)


def _reliability(summary: dict, title: str) -> str | None:
    rel = summary["final"]["test"].get("reliability")
    if not rel:
        return None
    count, acc, conf = (np.array(rel[k], dtype=float) for k in ("count", "accuracy", "confidence"))
    centres = (np.arange(len(count)) + 0.5) / len(count)
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.bar(centres, np.where(count > 0, acc, 0), width=1 / len(count), edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {summary['final']['test']['ece']:.3f}", fontsize=8)
    ax.legend(fontsize=7)
    return _figure_to_base64(fig)


def _matrix(rows: list[list]) -> np.ndarray:
    """A JSON matrix (None where a measure is undefined) as floats with NaN there."""
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def heatmap(matrix: list[list], names: list[str], title: str, fmt: str, cmap: str = "viridis",
            vmin: float | None = None, vmax: float | None = None, notes: np.ndarray | None = None) -> str:
    """A dataset-by-dataset matrix (rows: trained on, columns: tested on), every cell written
    in (`fmt`, '–' where undefined) with an optional second line per cell (`notes`)."""
    m = _matrix(matrix)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2.4, 1.1 * n + 1.6))
    shown = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("test on (its test split)")
    ax.set_ylabel("train on (its training split)")
    for i in range(n):
        for j in range(n):
            text = "–" if np.isnan(m[i, j]) else fmt.format(m[i, j])
            if notes is not None and not np.isnan(notes[i, j]):
                text += f"\n({notes[i, j]:.3g})"
            light = np.isnan(m[i, j]) or sum(shown.cmap(shown.norm(m[i, j]))[:3]) > 1.5
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if light else "white")
    ax.set_title(title, fontsize=9)
    return _figure_to_base64(fig)


def _cross_heatmap(cross: dict) -> str:
    return heatmap(cross["accuracy"], cross["datasets"], "cross-dataset accuracy; mean off-diagonal "
                   f"{cross['mean_off_diagonal']:.1%}", "{:.1%}", vmin=0, vmax=1)


def build_report(paths: list[Path], out_dir: Path) -> dict:
    from ldl.group_report import group_sections   # it draws with this module's helpers
    runs, crosses = find_runs(paths)
    if not runs and not crosses:
        raise ValueError(f"no run folders (summary.json) or cross.json under {[str(p) for p in paths]}")
    summaries = {run: json.loads((run / "summary.json").read_text()) for run in runs}
    run_groups, repeats = group_runs(runs, summaries)
    groups = {key: [summaries[run] for run in members] for key, members in run_groups.items()}

    header = ["dataset", "method", "noise", "seeds", *[name for _, name in METRICS], "test acc @ best val",
              "noise AUROC", "noisy-label fit"]
    tables: dict[str, list[list[str]]] = defaultdict(list)   # protocol -> rows
    for key, ss in groups.items():
        members = run_groups[key]
        row = [key.dataset, key.method, noise_label(key.noise_type, key.rate), str(len(ss))]
        row += [_mean_std([s["final"]["test"].get(m) for s in ss]) for m, _ in METRICS]
        row.append(_mean_std([s["best_val"].get("test", {}).get("accuracy") for s in ss]))
        row.append(_mean_std([_noise_auroc(s) for s in ss]))
        row.append(_mean_std([_final_noisy_fit(run) for run in members]))
        tables[key.protocol].append(row)
    epochs = sorted({s["epochs"] for s in summaries.values()})
    note = (f"Test metrics at the last epoch (of {', '.join(map(str, epochs))}), mean ± std over seeds; "
            "'test acc @ best val' is test accuracy at the epoch of best validation accuracy (test never "
            "selects). Noise AUROC scores each method's own noise score where it has one (SCN's and RUL's "
            "from an eval-mode pass over the un-augmented training set after training, LDLVA's and SLM-AEA's "
            "learned per-sample state), else the small-loss score 1 - p(given label) from the same pass. "
            "Noisy-label fit is the share of the training labels the noise changed that the model predicts "
            "at the last epoch, from that pass (memorisation: 1 = every wrong label learned). "
            "Noise is the type and the realised rate: the share of training labels that differ from the "
            "clean ones, mean over the seeds of a setting, rounded to whole percent.")
    starts = sorted({start_label(flatten(read_yaml(run / "config.yaml"))) for run in runs})
    note += " Start: " + "; ".join(starts) + "."
    if repeats:
        note += (f" {len(repeats)} run(s) repeating another run's settings and seeds were counted once: "
                 + ", ".join(run.name for run in repeats) + ".")
    md_tables = {protocol: "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                                     ["| " + " | ".join(r) + " |" for r in rows]) for protocol, rows in tables.items()}
    figures: list[tuple[str, str]] = []
    settings = sorted({(k.dataset, k.protocol, k.noise_type, k.rate) for k in run_groups if k.noise_type != "none"})
    for setting in settings:
        curves = _memorisation(run_groups, setting)
        if curves:
            figures.append((f"Memorisation: {setting[0]}, {noise_label(*setting[2:])}, {setting[1]} protocol", curves))
    for dataset, ntype, rate in sorted({(d, t, r) for d, _, t, r in settings}):
        title = f"Label noise: {dataset}, {noise_label(ntype, rate)}"
        matrix = _transition([s for k, ss in groups.items() if (k.dataset, k.noise_type, k.rate) == (dataset, ntype, rate)
                              for s in ss], title)
        if matrix:
            figures.append((f"{title} (clean label by given label)", matrix))
    for protocol in tables:
        curve = _accuracy_vs_noise(groups, protocol)
        if curve:
            figures.append((f"Accuracy against realised noise rate, {protocol} protocol", curve))
    group_md, group_html, group_figures = group_sections(groups)   # a table and a bar figure per attribute
    figures += group_figures
    cross_results = [json.loads(c.read_text()) for c in crosses]
    for cross in cross_results:
        figures.append(("Cross-dataset matrix (train rows, test columns)", _cross_heatmap(cross)))
    for key in groups:
        title = f"{key.title()} (seed {groups[key][0]['seed']})"
        figures.append((f"Confusion matrix: {title}", _confusion(groups[key][0], title)))
        hist = _uncertainty_histogram(run_groups[key][0], title)
        if hist:
            figures.append((f"Noise score, clean vs noisy: {title}", hist))
        rel = _reliability(groups[key][0], title)
        if rel:
            figures.append((f"Reliability: {title}", rel))

    out_dir.mkdir(parents=True, exist_ok=True)
    from ldl.cross import markdown as cross_markdown
    md = ["# ldl report", "", note, ""]
    for protocol, table in md_tables.items():
        md += [f"**{PROTOCOL_CAPTIONS.get(protocol, protocol)}**", "", table, ""]
    md += group_md
    for cross in cross_results:
        md += ["## Cross-dataset", "", cross_markdown(cross), ""]
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for i, (title, b64) in enumerate(figures):
        name = f"fig{i:02d}.png"
        (fig_dir / name).write_bytes(base64.b64decode(b64))
        md.append(f"### {title}\n\n![{title}](figures/{name})\n")
    (out_dir / "report.md").write_text("\n".join(md))

    table_html = "".join(
        f"<table><caption>{html.escape(PROTOCOL_CAPTIONS.get(protocol, protocol))}</caption><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"
        for protocol, rows in tables.items())
    cross_html = ""
    for cross in cross_results:
        names = cross["datasets"]
        cross_html += "<h2>Cross-dataset</h2><table><tr><th>train \\ test</th>" + "".join(
            f"<th>{html.escape(n)}</th>" for n in names) + "<th>mean off-diagonal</th></tr>" + "".join(
            f"<tr><th>{html.escape(n)}</th>" + "".join(
                f"<td{' class=diag' if i == j else ''}>{v:.2%}</td>" for j, v in enumerate(cross["accuracy"][i]))
            + f"<td>{cross['mean_off_diagonal_per_train'][n]:.2%}</td></tr>" for i, n in enumerate(names)) + "</table>"
    figs_html = "".join(f"<figure><img src='data:image/png;base64,{b64}'/><figcaption>{html.escape(t)}</figcaption></figure>"
                        for t, b64 in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>ldl report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right}} th{{background:#f3f3f3}}
td.diag{{font-weight:bold;background:#eef6ee}} figure{{display:inline-block;margin:8px;vertical-align:top}}
figcaption{{font-size:12px;max-width:420px}} p.note{{max-width:60em;font-size:13px;color:#555}}
</style></head><body><h1>ldl report</h1><p class="note">{html.escape(note)}</p>{table_html}{group_html}{cross_html}
<h2>Figures</h2>{figs_html}</body></html>"""
    (out_dir / "report.html").write_text(page)
    return {"groups": len(groups), "runs": len(runs), "repeats": len(repeats), "figures": len(figures),
            "tables": dict(tables), "header": header}
