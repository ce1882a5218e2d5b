"""Calibration, the fusion rule and the subset rule of our AffectNet+-style teacher.

Calibration (fitted on held-out data, never on the data being labelled):
- one-vs-rest scores: per-class Platt scaling, P(y = c | z_c) = sigmoid(a_c z_c + b_c), fitted
  by minimising binary cross-entropy;
- the AU-proxy head: one temperature T for its softmax, fitted by minimising NLL.
Fusion (log-linear pooling, a product of experts):
  e_c  = mean over backbones of the calibrated one-vs-rest probabilities, renormalised over c
  soft ∝ e^w_ebc * au^w_au        (w_ebc = 0.7, w_au = 0.3 by default), then renormalised.
  Log-linear pooling treats the two as independent evidence and keeps a class that either
  source rules out improbable, where a linear mixture would not.
Subsets (agreement between the soft label s and the human label y):
  0 easy         argmax s = y and s_y >= easy_min (0.6)
  2 difficult    s_y < difficult_max (0.2): the teacher finds the given label implausible
  1 challenging  everything else
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_platt(logits: np.ndarray, labels: np.ndarray, steps: int = 200) -> np.ndarray:
    """Per-class (a_c, b_c), shape [C, 2]."""
    z = torch.from_numpy(logits).double()
    target = F.one_hot(torch.from_numpy(labels), z.shape[1]).double()
    a = torch.ones(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a * z + b, target)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.stack([a, b], 1).detach().numpy()


def apply_platt(logits: np.ndarray, params: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(params[:, 0] * logits + params[:, 1])))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    z, y = torch.from_numpy(logits).double(), torch.from_numpy(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fuse(ovr_probs: list[np.ndarray], au_probs: np.ndarray | None, w_ebc: float = 0.7, w_au: float = 0.3) -> np.ndarray:
    """Calibrated one-vs-rest probabilities of each backbone ([N, C] each) and the AU head's
    distribution -> one soft label per sample."""
    ebc = np.mean(ovr_probs, axis=0)
    ebc = ebc / ebc.sum(1, keepdims=True)
    if au_probs is None:
        return ebc
    log_soft = w_ebc * np.log(np.clip(ebc, 1e-12, None)) + w_au * np.log(np.clip(au_probs, 1e-12, None))
    return softmax(log_soft)


def assign_subsets(soft: np.ndarray, labels: np.ndarray, easy_min: float = 0.6, difficult_max: float = 0.2) -> np.ndarray:
    given = soft[np.arange(len(labels)), labels]
    subset = np.ones(len(labels), dtype=np.int64)
    subset[(soft.argmax(1) == labels) & (given >= easy_min)] = 0
    subset[given < difficult_max] = 2
    return subset
