"""Demographic groups in the outputs: a table per attribute and a bar figure in `ldl report`, and
the gap matrices of `ldl cross` (the console tables of `ldl train` and `ldl eval`: ldl.fairness).

Report rows are the report's own groups (dataset, protocol, method setting, noise), over seeds
(mean ± std): test accuracy and macro-F1 per group, the gaps (max - min, min / max, demographic
parity and equalised-odds differences, see ldl.fairness), the training split's group sizes, the
realised noise rate per group where the noise was group-dependent, and each method's noise
score's detection AUROC within each group.
"""
from __future__ import annotations

import html

import numpy as np

from ldl.fairness import GAPS
from ldl.report import GroupKey, _figure_to_base64, _mean_std, noise_label, plt


def _test_groups(summary: dict) -> dict:
    return summary["final"].get("test", {}).get("groups") or {}


def _group_names(summaries: list[dict], attribute: str) -> list[str]:
    return sorted({g for s in summaries for g in _test_groups(s).get(attribute, {}).get("groups", {})})


def _joined(pairs: dict[str, str]) -> str:
    return " / ".join(f"{g} {v}" for g, v in pairs.items()) or "–"


def _training_side(ss: list[dict], attribute: str) -> tuple[str, str]:
    """The first seed's training group sizes, and its realised noise rate per group when the
    noise was group-dependent on this attribute (seeds of one setting share both up to noise)."""
    groups = ss[0].get("groups") or {}
    sizes = _joined({g: str(n) for g, n in groups.get("counts", {}).get("train", {}).get(attribute, {}).items()})
    by_group = (ss[0].get("noise") or {}).get("by_group") or {}
    if by_group.get("attribute") != attribute:
        return sizes, "–"
    return sizes, _joined({g: f"{e['realised_rate']:.0%}" for g, e in by_group["groups"].items()})


def _detection(summary: dict, attribute: str, group: str) -> float | None:
    """A run's own noise score's AUROC within one group (else the small-loss score's)."""
    entry = (((summary.get("groups") or {}).get("noise_detection") or {}).get(attribute) or {}).get("groups", {}).get(group)
    if not entry:
        return None
    return entry["auroc"].get("noise_score", entry["auroc"].get("model_noise_score"))


def attribute_table(groups: dict[GroupKey, list[dict]], attribute: str) -> tuple[list[str], dict[str, list[list[str]]]]:
    """Header and rows per protocol of one attribute's table (runs without it left out)."""
    members = {k: ss for k, ss in groups.items() if any(attribute in _test_groups(s) for s in ss)}
    names = _group_names([s for ss in members.values() for s in ss], attribute)
    header = ["dataset", "method", "noise", "seeds", "train groups", "noise by group",
              *[f"acc {g}" for g in names], *[f"F1 {g}" for g in names], *[label for _, label in GAPS],
              *[f"noise AUROC {g}" for g in names]]
    rows: dict[str, list[list[str]]] = {}
    for key, ss in members.items():
        scored = [_test_groups(s)[attribute] for s in ss if attribute in _test_groups(s)]
        per_group = [m["groups"] for m in scored]
        row = [key.dataset, key.method, noise_label(key.noise_type, key.rate), str(len(scored)),
               *_training_side(ss, attribute)]
        for metric in ("accuracy", "macro_f1"):
            row += [_mean_std([p[g][metric] for p in per_group if g in p]) for g in names]
        row += [_mean_std([m.get(gap) for m in scored]) for gap, _ in GAPS]
        row += [_mean_std([_detection(s, attribute, g) for s in ss]) for g in names]
        rows.setdefault(key.protocol, []).append(row)
    return header, rows


def accuracy_bars(groups: dict[GroupKey, list[dict]], attribute: str, protocol: str) -> str | None:
    """Test accuracy per group (bars, mean ± std over seeds) for every row of one protocol."""
    members = {k: ss for k, ss in groups.items() if k.protocol == protocol
               and any(attribute in _test_groups(s) for s in ss)}
    names = _group_names([s for ss in members.values() for s in ss], attribute)
    if not members or not names:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(members) * max(len(names), 2) / 2 + 2), 4))
    width = 0.8 / len(names)
    for i, g in enumerate(names):
        values = [[_test_groups(s)[attribute]["groups"][g]["accuracy"] for s in ss
                   if g in _test_groups(s).get(attribute, {}).get("groups", {})] for ss in members.values()]
        ax.bar(np.arange(len(members)) + (i - (len(names) - 1) / 2) * width,
               [np.mean(v) if v else np.nan for v in values], width,
               yerr=[np.std(v) if v else 0 for v in values], capsize=2, label=g)
    labels = [f"{k.method}\n{noise_label(k.noise_type, k.rate)}" for k in members]
    ax.set_xticks(range(len(members)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (last epoch)")
    ax.set_title(f"test accuracy by {attribute}, {protocol} protocol (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, title=attribute, title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _figure_to_base64(fig)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    return (f"<table><caption>{html.escape(caption)}</caption><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")


NOTE = ("Per demographic group: test accuracy and macro-F1 at the last epoch; gaps between the groups: max - min "
        "and min / max of accuracy and F1, demographic parity difference (largest over classes of the gap in the "
        "rate a class is predicted) and equalised-odds difference (largest over classes of the gap in true or "
        "false positive rate); train groups: training samples per group (first seed); noise by group: realised "
        "rate per group when the noise was group-dependent; noise AUROC: the method's own noise score (else the "
        "small-loss score) within each group's training samples. Mean ± std over seeds.")


def group_sections(groups: dict[GroupKey, list[dict]]) -> tuple[list[str], str, list[tuple[str, str]]]:
    """Markdown lines, HTML and (title, figure) pairs of the fairness sections (empty without groups)."""
    attributes = sorted({a for ss in groups.values() for s in ss for a in _test_groups(s)})
    md, page, figures = [], "", []
    for attribute in attributes:
        header, rows = attribute_table(groups, attribute)
        md += [f"## Groups: {attribute}", "", NOTE, ""]
        page += f"<h2>Groups: {html.escape(attribute)}</h2><p class='note'>{html.escape(NOTE)}</p>"
        for protocol, protocol_rows in rows.items():
            caption = f"{attribute}, {protocol} protocol"
            md += [f"**{caption}**", "", markdown_table(header, protocol_rows), ""]
            page += html_table(caption, header, protocol_rows)
            bars = accuracy_bars(groups, attribute, protocol)
            if bars:
                figures.append((f"Test accuracy by {attribute}, {protocol} protocol", bars))
    return md, page, figures


CROSS_GAPS = ("accuracy_gap", "f1_gap", "demographic_parity_difference", "equalised_odds_difference")


def cross_gap_matrices(names: list[str], cells: list[list[dict]]) -> dict:
    """attribute -> gap -> [train][test] matrix (None where the test set lacks the attribute),
    from each cell's evaluation "groups"."""
    attributes = sorted({a for row in cells for cell in row for a in cell})
    return {a: {gap: [[cells[i][j].get(a, {}).get(gap) for j in range(len(names))] for i in range(len(names))]
                for gap in CROSS_GAPS} for a in attributes}


def cross_gap_tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(caption, header, rows) of the accuracy gap and demographic parity difference matrices per
    attribute of a cross result."""
    names, out = result["datasets"], []
    for attribute, gaps in (result.get("groups") or {}).items():
        for gap in ("accuracy_gap", "demographic_parity_difference"):
            rows = [[name, *("–" if v is None else f"{v:.4f}" for v in gaps[gap][i])] for i, name in enumerate(names)]
            out.append((f"{gap.replace('_', ' ')} by {attribute}, train rows by test columns",
                        ["train \\ test", *names], rows))
    return out


def cross_markdown(result: dict) -> str:
    return "".join(f"\n\n**{caption}**\n\n{markdown_table(header, rows)}" for caption, header, rows in cross_gap_tables(result))
