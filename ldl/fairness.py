"""Per-group metrics and the gaps between groups, for every demographic attribute of a split.

Per group (samples whose value is unknown are counted, not scored): accuracy, mean-class
accuracy, macro-F1, ECE, and KL(true || predicted) where the split has label distributions.
Gaps over the groups of one attribute:
- accuracy / macro-F1: max - min and min / max of the per-group values;
- demographic parity difference: for each class, the max - min over groups of the rate at which
  the class is predicted; the largest over classes;
- equalised-odds difference: for each class one-vs-rest, the max - min over groups of the true
  positive rate and of the false positive rate; the largest of both over classes.  A group with
  no sample of the class (or none of the others) has no TPR (FPR) for it and is left out of
  that gap.
On training labels with injected noise: each noise score's detection AUROC within each group, so
that a method's score can be seen to find one group's wrong labels better than another's.
"""
from __future__ import annotations

import numpy as np
from rich.table import Table

from ldl.data.groups import MISSING
from ldl.metrics import classification_metrics, distribution_metrics, noise_detection_metrics

GROUP_METRICS = ("accuracy", "mean_class_accuracy", "macro_f1", "ece")


def _spread(values: list[float]) -> tuple[float, float | None]:
    """(max - min, min / max) of per-group values; the ratio is None when max is 0."""
    high, low = max(values), min(values)
    return high - low, (low / high if high > 0 else None)


def _largest_gap(rates: np.ndarray) -> float | None:
    """Max over classes of the max - min over groups of a [groups, classes] rate table, NaN
    entries (undefined rates) left out; None when no class has two groups with a rate."""
    defined = ~np.isnan(rates)
    gaps = [np.nanmax(col) - np.nanmin(col) for col, ok in zip(rates.T, defined.T) if ok.sum() >= 2]
    return float(max(gaps)) if gaps else None


def parity_gaps(target: np.ndarray, pred: np.ndarray, values: np.ndarray, groups: list[str],
                num_classes: int) -> dict:
    """Demographic parity and equalised-odds differences of predictions `pred` between `groups`."""
    positive_rate = np.array([np.bincount(pred[values == g], minlength=num_classes) / (values == g).sum()
                              for g in groups])
    tpr = np.full((len(groups), num_classes), np.nan)
    fpr = np.full_like(tpr, np.nan)
    for i, g in enumerate(groups):
        t, p = target[values == g], pred[values == g]
        for c in range(num_classes):
            if (t == c).any():
                tpr[i, c] = (p[t == c] == c).mean()
            if (t != c).any():
                fpr[i, c] = (p[t != c] == c).mean()
    parity_by_class = positive_rate.max(0) - positive_rate.min(0)
    odds = [gap for gap in (_largest_gap(tpr), _largest_gap(fpr)) if gap is not None]
    return {"demographic_parity_difference": float(parity_by_class.max()),
            "demographic_parity_by_class": parity_by_class.tolist(),
            "equalised_odds_difference": max(odds) if odds else None}


def attribute_metrics(target: np.ndarray, probs: np.ndarray, values: np.ndarray,
                      dist: np.ndarray | None = None, ece_bins: int = 15) -> dict:
    """Per-group metrics of one attribute (`values`: each sample's group, MISSING if unknown)
    and, with two groups or more, the gaps between them."""
    groups = sorted(set(values.tolist()) - {MISSING})
    per_group = {}
    for g in groups:
        member = values == g
        scores = classification_metrics(target[member], probs[member], ece_bins)
        entry = {"n": int(member.sum()), **{k: scores[k] for k in GROUP_METRICS}}
        if dist is not None:
            entry["kl"] = distribution_metrics(dist[member], probs[member])["kl"]
        per_group[g] = entry
    out: dict = {"groups": per_group, "unknown": int((values == MISSING).sum())}
    if len(groups) >= 2:
        for key, name in (("accuracy", "accuracy"), ("macro_f1", "f1")):
            out[f"{name}_gap"], out[f"{name}_ratio"] = _spread([per_group[g][key] for g in groups])
        out.update(parity_gaps(target, probs.argmax(1), values, groups, probs.shape[1]))
    return out


def group_metrics(target: np.ndarray, probs: np.ndarray, groups: dict[str, np.ndarray],
                  dist: np.ndarray | None = None, ece_bins: int = 15) -> dict:
    """attribute -> `attribute_metrics`, for every attribute of a split."""
    return {name: attribute_metrics(target, probs, values, dist, ece_bins) for name, values in groups.items()}


def group_noise_detection(scores: dict[str, np.ndarray], is_noisy: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    """Per attribute and group: samples, realised noise rate and each score's noise-detection
    AUROC within the group (NaN where the group has no noisy or no clean sample); per score the
    max - min of its AUROC over the groups where it is defined."""
    out = {}
    for name, values in groups.items():
        per_group = {}
        for g in sorted(set(values.tolist()) - {MISSING}):
            member = values == g
            per_group[g] = {"n": int(member.sum()), "noise_rate": float(is_noisy[member].mean()),
                            "auroc": {key: noise_detection_metrics(np.asarray(score, dtype=float)[member],
                                                                   is_noisy[member])["noise_auroc"]
                                      for key, score in scores.items()}}
        gaps = {}
        for key in scores:
            defined = [e["auroc"][key] for e in per_group.values() if not np.isnan(e["auroc"][key])]
            gaps[key] = _spread(defined)[0] if len(defined) >= 2 else None
        out[name] = {"groups": per_group, "auroc_gap": gaps}
    return out


# The console's view (ldl train, ldl eval): kept here, away from the report's matplotlib.
GAPS = (("accuracy_gap", "acc gap"), ("accuracy_ratio", "acc min/max"), ("f1_gap", "F1 gap"),
        ("f1_ratio", "F1 min/max"), ("demographic_parity_difference", "DP diff"),
        ("equalised_odds_difference", "EO diff"))


def group_tables(metrics: dict, title: str) -> list[Table]:
    """One console table per attribute of an evaluation's "groups", its gaps in the caption."""
    tables = []
    for attribute, m in metrics.get("groups", {}).items():
        columns = ["n", "accuracy", "mean_class_accuracy", "macro_f1", "ece"] + (
            ["kl"] if any("kl" in e for e in m["groups"].values()) else [])
        table = Table(title=f"{title}: by {attribute}" + (f" ({m['unknown']} unknown)" if m["unknown"] else ""))
        table.add_column(attribute)
        for column in columns:
            table.add_column(column.replace("_", " "), justify="right")
        for g, e in m["groups"].items():
            table.add_row(g, str(e["n"]), *(f"{e[c]:.4f}" for c in columns[1:]))
        gaps = [f"{label} {m[key]:.4f}" for key, label in GAPS if m.get(key) is not None]
        table.caption = ", ".join(gaps)
        tables.append(table)
    return tables
