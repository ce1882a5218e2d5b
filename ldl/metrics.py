"""Classification, calibration, label-distribution and noise-detection metrics (numpy).

LDL measures follow Geng's definitions (KL, Chebyshev, Clark, Canberra as distances; cosine and
intersection as similarities), averaged over samples; 0/0 terms count as 0.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

EPS = 1e-12


def confusion_matrix(target: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return np.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def classification_metrics(target: np.ndarray, probs: np.ndarray, ece_bins: int = 15) -> dict:
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    cm = confusion_matrix(target, pred, num_classes)
    support = cm.sum(1)
    present = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(num_classes), where=present)
    predicted = cm.sum(0)
    precision = np.divide(np.diag(cm), predicted, out=np.zeros(num_classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=(precision + recall) > 0)
    reliability = reliability_bins(target, probs, ece_bins)
    nll = -np.log(np.clip(probs[np.arange(len(target)), target], EPS, None)).mean()
    return {
        "accuracy": float((pred == target).mean()),
        "mean_class_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "ece": _ece_from_bins(reliability),
        "nll": float(nll),
        "per_class_accuracy": [float(r) if p else None for r, p in zip(recall, present)],
        "confusion_matrix": cm.tolist(),
        "reliability": reliability,
    }


def expected_calibration_error(target: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Equal-width bins on the top-1 confidence: sum_b |B|/N * |acc(B) - conf(B)|."""
    return _ece_from_bins(reliability_bins(target, probs, bins))


def _ece_from_bins(rel: dict) -> float:
    count = np.array(rel["count"], dtype=float)
    gap = np.abs(np.array(rel["accuracy"]) - np.array(rel["confidence"]))
    return float((count / count.sum() * gap).sum())


def reliability_bins(target: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """Per equal-width confidence bin: sample count, accuracy and mean confidence (0 when empty)."""
    conf, correct = probs.max(1), probs.argmax(1) == target
    which = np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins) / np.maximum(count, 1)
    return {"count": count.tolist(), "accuracy": acc.tolist(), "confidence": mean_conf.tolist()}


def distribution_metrics(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Six LDL measures between ground-truth rows `truth` and predicted rows `pred`."""
    t, p = truth.astype(np.float64), pred.astype(np.float64)
    kl = np.where(t > 0, t * (np.log(np.clip(t, EPS, None)) - np.log(np.clip(p, EPS, None))), 0).sum(1)
    total = t + p
    clark = np.sqrt(np.divide((t - p) ** 2, total ** 2, out=np.zeros_like(t), where=total > 0).sum(1))
    canberra = np.divide(np.abs(t - p), total, out=np.zeros_like(t), where=total > 0).sum(1)
    cosine = (t * p).sum(1) / np.clip(np.linalg.norm(t, axis=1) * np.linalg.norm(p, axis=1), EPS, None)
    return {
        "kl": float(kl.mean()),
        "chebyshev": float(np.abs(t - p).max(1).mean()),
        "clark": float(clark.mean()),
        "canberra": float(canberra.mean()),
        "cosine": float(cosine.mean()),
        "intersection": float(np.minimum(t, p).sum(1).mean()),
    }


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` for detecting `positive` (Mann-Whitney U, ties averaged)."""
    positive = positive.astype(bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noise_detection_metrics(score: np.ndarray, is_noisy: np.ndarray) -> dict:
    """AUROC, and precision among the top-k scores with k = the true number of noisy samples."""
    k = int(is_noisy.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return {
        "noise_auroc": auroc(score, is_noisy),
        "noise_precision_at_rate": float(is_noisy[top].mean()) if k else float("nan"),
    }
