"""The neck between a backbone's feature map and the heads: batch normalisation of the pooled
features (as re-identification's BNNeck, Luo et al. 2019), applied to the map itself as the same
per-channel affine map.  So pool(neck(map)) = BatchNorm1d(pool(map)) exactly, and a linear head on
the map's positions still averages to the logits (EAC's class-activation maps stay exact), which
a BatchNorm2d, normalising by the spread over positions too, would not give."""
from __future__ import annotations

import torch
from torch import nn


class PooledBatchNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.training:
            pooled = fmap.mean((2, 3))
            mean, var = pooled.mean(0), pooled.var(0, unbiased=False)
            with torch.no_grad():   # BatchNorm's running statistics (unbiased variance)
                n = len(pooled)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return fmap * scale[:, None, None] + shift[:, None, None]
