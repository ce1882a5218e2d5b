"""The neck between a backbone's feature map and the heads: ActNorm (Kingma & Dhariwal, Glow,
2018) on the pooled features, applied to the map as the same per-channel affine.  Its scale and
shift are set at the first training batch so that the pooled features come out with zero mean and
unit variance per channel, then train as ordinary parameters.  So pool(neck(map)) = neck(pool(map))
(a linear head on the map's positions still averages to the logits: EAC's CAMs stay exact), and
training and evaluation compute the same function.

Why not BatchNorm: behind a scale-invariant BatchNorm the body grew dlib's descriptor from about
0.1 to about 200 within 12 epochs (Adam on scale-invariant weights) while its spread stayed near 5 %
of that, so the running statistics lagged by many standard deviations and evaluation predicted
one class at epochs where training loss fell."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class ActNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialised", torch.tensor(False))

    @torch.no_grad()
    def _initialise(self, pooled: torch.Tensor) -> None:
        pooled = pooled.double()   # E[x^2] - E[x]^2 of values whose spread is ~1 % of their size
        moments = torch.stack([pooled.mean(0), pooled.pow(2).mean(0)])
        if dist.is_available() and dist.is_initialized():   # every rank starts from the same affine
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
        mean, var = moments[0], (moments[1] - moments[0] ** 2).clamp(min=0)
        scale = torch.rsqrt(var + self.eps)
        self.log_scale.copy_(scale.log().float())
        self.shift.copy_((-mean * scale).float())
        self.initialised.fill_(True)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.training and not self.initialised:
            self._initialise(fmap.mean((2, 3)))
        return fmap * self.log_scale.exp()[:, None, None] + self.shift[:, None, None]
