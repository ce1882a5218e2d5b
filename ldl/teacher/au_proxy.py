"""The action-unit proxy: facial-geometry features from 68 iBUG landmarks and a small head.

Landmarks are normalised for pose (centred on the eyes' midpoint, rotated so the eyes are level,
scaled by the inter-ocular distance); the features are the distances that the facial action
units move: inner/outer brow to eye (AU1, AU2, AU4), eye opening (AU5, AU7), nostril height
(AU9), lip-corner height against the mouth centre (AU12, AU15) and its left-right asymmetry
(AU14), mouth opening (AU26) and width (AU20).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

FEATURE_NAMES = ("inner_brow_left", "inner_brow_right", "outer_brow_left", "outer_brow_right", "eye_open_left",
                 "eye_open_right", "nostril_height", "corner_lift_left", "corner_lift_right", "corner_asymmetry",
                 "mouth_open", "mouth_width", "upper_lip_height", "chin_drop")


def normalise(landmarks: np.ndarray) -> np.ndarray:
    """[N, 68, 2] -> pose-normalised points (eye midpoint at 0, eyes level, inter-ocular distance 1)."""
    left_eye, right_eye = landmarks[:, 36:42].mean(1), landmarks[:, 42:48].mean(1)
    centre = (left_eye + right_eye) / 2
    axis = right_eye - left_eye
    dist = np.linalg.norm(axis, axis=1, keepdims=True).clip(min=1e-6)
    cos, sin = (axis / dist).T
    rel = landmarks - centre[:, None]
    x = rel[..., 0] * cos[:, None] + rel[..., 1] * sin[:, None]
    y = -rel[..., 0] * sin[:, None] + rel[..., 1] * cos[:, None]
    return np.stack([x, y], -1) / dist[:, None]


def geometry_features(landmarks: np.ndarray) -> np.ndarray:
    p = normalise(landmarks.astype(np.float64))
    y = p[..., 1]
    mouth_centre = (y[:, 62] + y[:, 66]) / 2
    feats = np.stack([
        y[:, 39] - y[:, 21], y[:, 42] - y[:, 22],            # inner brow above inner eye corner
        y[:, 36] - y[:, 17], y[:, 45] - y[:, 26],            # outer brow above outer eye corner
        (y[:, 40] + y[:, 41] - y[:, 37] - y[:, 38]) / 2,     # eye opening
        (y[:, 46] + y[:, 47] - y[:, 43] - y[:, 44]) / 2,
        y[:, 33] - y[:, 30],                                 # nostril below nose tip... raised by AU9
        mouth_centre - y[:, 48], mouth_centre - y[:, 54],    # lip corners above the mouth centre
        y[:, 48] - y[:, 54],                                 # one-sided corner raise (AU14)
        y[:, 66] - y[:, 62],                                 # inner lips apart (AU26)
        p[:, 54, 0] - p[:, 48, 0],                           # mouth width (AU20, AU12)
        y[:, 62] - y[:, 33],                                 # upper lip to nose
        y[:, 8] - y[:, 33],                                  # chin to nose (jaw drop)
    ], 1)
    return feats.astype(np.float32)


class AUProxyHead(nn.Module):
    """Standardised geometry features -> MLP -> class logits."""

    def __init__(self, num_classes: int, hidden: int = 64):
        super().__init__()
        self.register_buffer("mean", torch.zeros(len(FEATURE_NAMES)))
        self.register_buffer("std", torch.ones(len(FEATURE_NAMES)))
        self.net = nn.Sequential(nn.Linear(len(FEATURE_NAMES), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net((feats - self.mean) / self.std)


def landmark_features(landmarks: np.ndarray | None, needed_by: str) -> np.ndarray:
    """geometry_features of a split's 68 landmarks, or a clear error naming what needs them."""
    if landmarks is None or not np.isfinite(landmarks).all():
        raise ValueError(f"{needed_by} needs 68 landmarks for every sample (AffectNet and the synthetic set have "
                         "them; add them to any dataset with `ldl landmarks`)")
    return geometry_features(landmarks)


def train_au_head(feats: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int = 300,
                  seed: int = 0) -> AUProxyHead:
    torch.manual_seed(seed)
    head = AUProxyHead(num_classes)
    x, y = torch.from_numpy(feats), torch.from_numpy(labels)
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0).clamp(min=1e-6))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):   # full batch: a few thousand rows of 14 features
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
    return head.eval()
