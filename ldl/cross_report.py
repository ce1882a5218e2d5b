"""`ldl cross`'s report: cross.md and a self-contained cross.html beside cross.json, with the
matrix, the paper's measures per dataset, every pair measure as a heat map on the matrix's
axes (rows: trained on, columns: tested on, in the plan's order), and the transfer drop against
each distance with its Spearman correlation; one sentence under each figure says how to read it.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldl.models import SELF_LOADING  # noqa: E402
from ldl.report import _figure_to_base64, _matrix, heatmap  # noqa: E402
from ldl.transfer import DISTANCES  # noqa: E402
from ldl.group_report import cross_gap_tables, html_table, markdown_table  # noqa: E402

METRIC_NAMES = {"accuracy": "accuracy", "mean_class_accuracy": "mean-class accuracy", "macro_f1": "macro-F1"}
DISTANCE_NAMES = {"prior_js": "class-prior JS divergence", "label_js": "label-distribution JS divergence",
                  "frechet": "Frechet distance of pooled features", "mmd": "feature MMD²"}


def _drop_scatter(transfer: dict, names: list[str], metric: str) -> str:
    drop = _matrix(transfer["pairs"]["transfer_drop"])
    off = ~np.eye(len(names), dtype=bool)
    labels = [f"{a}→{b}" for i, a in enumerate(names) for j, b in enumerate(names) if i != j]
    fig, axes = plt.subplots(1, len(DISTANCES), figsize=(4.2 * len(DISTANCES), 3.8), sharey=True)
    for ax, key in zip(axes, DISTANCES):
        x = _matrix(transfer["pairs"][key])[off]
        ax.scatter(x, drop[off])
        for xi, yi, label in zip(x, drop[off], labels):
            if np.isfinite(xi):
                ax.annotate(label, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        c = transfer["correlations"][key]
        rho = "undefined" if c["spearman_rho"] is None else f"{c['spearman_rho']:.2f} (p = {c['p_value']:.2g})"
        ax.set_title(f"Spearman ρ = {rho}, {c['pairs']} pairs", fontsize=8)
        ax.set_xlabel(DISTANCE_NAMES[key])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"transfer drop ({METRIC_NAMES[metric]}): target in-domain − cross")
    return _figure_to_base64(fig)


def figures(result: dict) -> list[tuple[str, str, str]]:
    """(title, one sentence on how to read it, base64 PNG) for each figure of the report."""
    names, transfer = result["datasets"], result["transfer"]
    pairs, metric = transfer["pairs"], METRIC_NAMES[transfer["metric"]]
    out = [("Accuracy matrix",
            "Row = dataset trained on, column = test set: the diagonal is each dataset's in-domain accuracy and "
            "a column's other cells show how well each other dataset prepares a model for it.",
            heatmap(result["accuracy"], names, "test accuracy", "{:.1%}", vmin=0, vmax=1)),
           ("Paired Similarity",
            f"Each cell divides the row model's {metric} on the column's test set by the column's own in-domain "
            f"{metric} (Gaya-Morey et al. 2025): 1 means the source prepares a model for the target as well as "
            "the target's own training set does, below 1 what is lost.",
            heatmap(pairs["paired_similarity"], names, f"Paired Similarity ({metric})", "{:.2f}", "magma", vmin=0)),
           ("Transfer drop",
            f"The column's in-domain {metric} minus the row model's {metric} on it: what the target loses when "
            "the model is trained on the row's dataset instead of its own.",
            heatmap(pairs["transfer_drop"], names, f"transfer drop ({metric})", "{:.3f}", "Reds")),
           ("Class-prior divergence",
            "Jensen-Shannon divergence (bits, 0 to 1) between the class frequencies of the row's training labels "
            "and of the column's test labels: a large cell means the two datasets show each expression at very "
            "different rates.",
            heatmap(pairs["prior_js"], names, "class-prior JS divergence (bits)", "{:.3f}", "Oranges", vmin=0))]
    if any(v is not None for row in pairs["label_js"] for v in row):
        out.append(("Label-distribution divergence",
                    "Mean JS divergence between the two datasets' ambiguity profiles (for each expression, the "
                    "average label distribution of the samples whose distribution peaks at it); '–' where either "
                    "side has no soft labels or votes.",
                    heatmap(pairs["label_js"], names, "label-distribution JS divergence (bits)", "{:.3f}", "Oranges",
                            vmin=0)))
    backbone = transfer["settings"]["backbone"]
    start = f"random weights, seed {transfer['settings']['seed']}"
    if backbone["pretrained"] or backbone["arch"] in SELF_LOADING:
        start = f"weights {backbone['pretrained'] or 'of its own'}"
    out += [("Frechet distance of pooled features",
             f"Frechet distance between Gaussians fitted to the pooled features of a fixed {backbone['arch']} "
             f"({start}) on the row's training images and the column's test images: "
             "the diagonal is each dataset's own train-test floor, and cells well above both floors mark a shift "
             "in what the images look like.",
             heatmap(pairs["frechet"], names, "Frechet distance (fixed backbone)", "{:.3g}", "Purples")),
            ("Feature MMD and its permutation test",
             "Unbiased Gaussian-kernel MMD² between subsamples of the same features, its permutation p-value in "
             "brackets: p < 0.05 means the test tells the two image sets apart.",
             heatmap(pairs["mmd"], names, "MMD² (p-value)", "{:.3g}", "Purples",
                     notes=_matrix(pairs["mmd_p"]))),
            ("Transfer drop against each distance",
             "Each point is one ordered pair off the diagonal, its transfer drop against one distance, with "
             "Spearman's rank correlation over the pairs: a distance that explains the matrix has a large "
             "positive ρ (with few datasets the p-value stays large).",
             _drop_scatter(transfer, names, transfer["metric"]))]
    return out


def _fmt(value, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of the per-dataset measures and the correlations."""
    transfer = result["transfer"]
    metric = METRIC_NAMES[transfer["metric"]]
    per = transfer["per_dataset"]
    header = ["dataset", f"Local Similarity (in-domain {metric})", "Global Similarity (mean Paired, others)",
              f"mean off-diagonal {metric}", "label entropy (/ log C)", "estimated noise rate", "realised noise rate"]
    rows = [[name, _fmt(d["local_similarity"]), _fmt(d["global_similarity"]), _fmt(d["mean_off_diagonal"]),
             _fmt(d["label_entropy"]),
             "–" if d["estimated_noise_rate"] is None else f"{d['estimated_noise_rate']:.1%} ({d['noise_score']} > 0.5)",
             _fmt(d["realised_noise_rate"], "{:.1%}")] for name, d in per.items()]
    corr = [[DISTANCE_NAMES[k], _fmt(c["spearman_rho"], "{:.2f}"), _fmt(c["p_value"], "{:.3g}"), str(c["pairs"])]
            for k, c in transfer["correlations"].items()]
    names = result["datasets"]
    matrix = [[n] + [f"{v:.2%}" for v in result["accuracy"][i]] for i, n in enumerate(names)]
    return [("Test accuracy, train rows by test columns (diagonal: in-domain)", ["train \\ test", *names], matrix),
            (f"Per dataset ({metric}; Local, Global and Paired Similarity after Gaya-Morey et al. 2025; the noise "
             "rate a trained method estimates is the share of its training samples scored above 0.5)", header, rows),
            ("Spearman correlation of the transfer drop with each distance (ordered pairs off the diagonal)",
             ["distance", "ρ", "p-value", "pairs"], corr)]


def write(result: dict, out_dir: Path, title: str) -> None:
    """cross.md (figures as PNG files under figures/) and a self-contained cross.html."""
    figs, tabs = figures(result), tables(result) + cross_gap_tables(result)
    note = (f"Direction: {result['transfer']['direction']}. {result['space']}, {result['epoch']} epoch; one run per "
            f"dataset, trained by {result['training']}. The paper's measures and the drops use "
            f"{METRIC_NAMES[result['transfer']['metric']]}.")
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# Cross-dataset transfer: {title}", "", note, ""]
    for caption, header, rows in tabs:
        md += [f"**{caption}**", "", markdown_table(header, rows), ""]
    for i, (name, sentence, b64) in enumerate(figs):
        (fig_dir / f"cross{i:02d}.png").write_bytes(base64.b64decode(b64))
        md += [f"### {name}", "", sentence, "", f"![{name}](figures/cross{i:02d}.png)", ""]
    (out_dir / "cross.md").write_text("\n".join(md))
    body = "".join(html_table(caption, header, rows) for caption, header, rows in tabs)
    body += "".join(f"<h3>{html.escape(name)}</h3><p>{html.escape(s)}</p><img src='data:image/png;base64,{b64}'/>"
                    for name, s, b64 in figs)
    (out_dir / "cross.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:75em} table{border-collapse:collapse;"
        "margin:1em 0} td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right} "
        "th{background:#f3f3f3} caption{font-size:13px;text-align:left}</style></head><body>"
        f"<h1>Cross-dataset transfer: {html.escape(title)}</h1><p>{html.escape(note)}</p>{body}</body></html>")
