"""LDLVA: uncertainty-aware label distribution learning in valence-arousal space
(Le et al., "Uncertainty-aware Label Distribution Learning for Facial Expression Recognition",
WACV 2023; public code minhnhatvt/label-distribution-learning-fer-tf).

For a training sample i with given label y_i and auxiliary point a_i (VA by default):
  N(i)        the K nearest training samples to a_i (self excluded), searched once    (K = 8)
  s_ik        local similarity: exp(-||a_i - a_k||^2 / delta^2) (paper, `gaussian`) or
              exp(-(|dv| + |da|) / 0.5) (public code, `l1`)
  zeta_ik     calibration MLP on [f_i, f_k]: 2D -> 512 -> BN -> ReLU -> 256 -> BN -> ReLU -> 1,
              clamped >= -1.3, sigmoid
  d_i         sum_k s_ik zeta_ik p_k / sum_k s_ik zeta_ik, p_k the network's prediction for
              neighbour k (no gradient through p_k)
  t_i         l_i onehot(y_i) + (1 - l_i) d_i,  l_i = sigmoid(theta_i) learnable per sample,
              theta_i initialised to 0.5 (the public code's lamb_init, so l_i starts at 0.62),
              optimised by its own SGD (lr 10, no momentum)
  loss        CE(t_i, p_i) + gamma L_D, gamma = 0.01
  L_D         public code's discriminative loss: 0.5 * mean_i l_i ||f_i - c_{y_i}||^2 with l_i
              detached; class centres c (zero-initialised) move by their own SGD (lr 0.5)
              toward their samples and apart by 0.1 * grad of sum_{j!=k} exp(-||c_j - c_k||^2 / D)
1 - l_i is the sample's label uncertainty: exported per sample and scored as a noise detector.

Warm-up (not in the paper): for `warmup_epochs` epochs the target is the one-hot label and the
weights l_i stay frozen.  The paper starts from MS-Celeb weights, so the neighbours' predictions
mean something from the first step; from random weights they are the network's own guesses, and
d loss / d l_i = sum_c d_ic log p_ic - log p_iy > 0 for every sample the untrained network does
not predict, so l falls, the target becomes the network's prediction and training can collapse
to the majority class.  Default 0 (the paper); the from-scratch synthetic configs use 1.

Modes.  faithful: neighbour images are forwarded through the network at every step (no grad),
so a batch of B costs (K+1)B forward images, as in the paper; they are gathered from the
GPU-resident dataset when there is one.  fast: neighbour predictions and
features come from a per-sample memory bank refreshed whenever a sample is in a batch; the bank
is filled once before training and is part of the checkpoint.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldl.data.augment import normalize
from ldl.data.dataset import FERData, gather_rows
from ldl.methods.base import Method, MethodContext, StepOutput, register_method
from ldl.neighbors import knn


class CalibrationNet(nn.Module):
    def __init__(self, feature_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * feature_dim, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                 nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, 1))

    def forward(self, feat: torch.Tensor, neighbour_feat: torch.Tensor) -> torch.Tensor:
        """feat [B, D], neighbour_feat [B, K, D] -> zeta [B, K] in (0, 1)."""
        b, k, d = neighbour_feat.shape
        pairs = torch.cat([feat[:, None].expand(b, k, d), neighbour_feat], dim=-1).reshape(b * k, 2 * d)
        return torch.sigmoid(self.net(pairs).clamp(min=-1.3)).view(b, k)


def local_similarity(aux: np.ndarray, neighbours: np.ndarray, kind: str, delta: float) -> np.ndarray:
    diff = aux[neighbours] - aux[:, None]
    if kind == "gaussian":
        return np.exp(-(diff ** 2).sum(-1) / delta ** 2)
    if kind == "l1":
        return np.exp(-np.abs(diff).sum(-1) / delta)
    raise ValueError(f"method.ldlva.similarity must be 'gaussian' or 'l1', got {kind!r}")


def aggregate(prob_neighbours: torch.Tensor, similarity: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """d_i = sum_k c_ik p_k / sum_k c_ik with c_ik = s_ik zeta_ik."""
    c = similarity * zeta
    return (c[..., None] * prob_neighbours).sum(1) / c.sum(1, keepdim=True).clamp(min=1e-12)


def target_distribution(labels: torch.Tensor, weight: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
    """t_i = l_i onehot(y_i) + (1 - l_i) d_i."""
    onehot = F.one_hot(labels, aggregated.shape[1]).to(aggregated.dtype)
    return weight[:, None] * onehot + (1 - weight[:, None]) * aggregated


@register_method("ldlva")
class LDLVA(Method):
    per_sample_buffers = ("bank_probs", "bank_feats")
    shared_buffers = ("centres",)
    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
        if cfg.mode not in ("fast", "faithful"):
            raise ValueError(f"method.ldlva.mode must be 'fast' or 'faithful', got {cfg.mode!r}")
        n, c, d, k = ctx.num_train, ctx.num_classes, ctx.feature_dim, cfg.k
        self.theta = nn.Parameter(torch.full((n,), float(cfg.init_logit)))
        self.lambda_optimizer = torch.optim.SGD([self.theta], lr=cfg.lambda_lr, momentum=cfg.lambda_momentum)
        self.calibration = CalibrationNet(d)
        self.register_buffer("neighbours", torch.zeros((n, k), dtype=torch.long))
        self.register_buffer("similarity", torch.ones((n, k)))
        self.register_buffer("centres", torch.zeros((c, d)))
        self.register_buffer("bank_probs", torch.full((n, c), 1.0 / c))
        self.register_buffer("bank_feats", torch.zeros((n, d)))
        # Neighbour images (faithful mode, bank fill) come from the GPU-resident copy when there is one.
        self.train_images = ctx.train_images if ctx.train_images is not None else (
            ctx.train_data.images if ctx.train_data is not None else None)
        self.train_labels = (torch.from_numpy(ctx.train_data.labels).to(ctx.device)
                             if ctx.train_data is not None else None)

    # ------------------------------------------------------------------ neighbours
    def auxiliary_space(self, model: nn.Module, data: FERData) -> np.ndarray:
        space = self.cfg.space
        if space == "va":
            if data.va is None or not np.isfinite(data.va).all():
                raise ValueError("method.ldlva.space=va needs valence-arousal for every training sample; "
                                 "give pseudo-VA with data.va_file (see `ldl va annotate`) or use space=features")
            return data.va.astype(np.float32)
        if space == "soft":
            if data.soft is None:
                raise ValueError("method.ldlva.space=soft needs teacher soft labels (AffectNet+ layout)")
            return data.soft.astype(np.float32)
        if space == "features":
            return self._forward_all(model, len(data))[1].cpu().numpy()
        raise ValueError(f"method.ldlva.space must be va, soft or features, got {space!r}")

    def on_train_start(self, model: nn.Module, train_data: FERData) -> None:
        aux = self.auxiliary_space(model, train_data)
        neighbours = knn(aux, self.cfg.k, self.cfg.knn_backend)
        scale = self.cfg.delta if self.cfg.similarity == "gaussian" else self.cfg.l1_scale
        self.neighbours.copy_(torch.from_numpy(neighbours))
        self.similarity.copy_(torch.from_numpy(local_similarity(aux, neighbours, self.cfg.similarity, scale)))
        if self.cfg.mode == "fast":
            probs, feats = self._forward_all(model, len(train_data))
            self.bank_probs.copy_(probs)
            self.bank_feats.copy_(feats)

    # ------------------------------------------------------------------ forward helpers
    def _images(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.train_images, torch.Tensor):
            batch = self.train_images[index.flatten().to(self.train_images.device)]
        else:
            batch = gather_rows(self.train_images, index.flatten().cpu()).to(self.theta.device)
        return normalize(batch.permute(0, 3, 1, 2).float().div_(255))

    @torch.no_grad()
    def _forward_all(self, model: nn.Module, n: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        probs, feats = [], []
        for start in range(0, n, chunk):
            out = model(self._images(torch.arange(start, min(n, start + chunk))))
            probs.append(torch.softmax(out["logits"].float(), 1))
            feats.append(out["features"].float())
        model.train(was_training)
        return torch.cat(probs), torch.cat(feats)

    def _neighbour_outputs(self, model: nn.Module, neighbours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = neighbours.shape
        if self.cfg.mode == "fast":
            return self.bank_probs[neighbours], self.bank_feats[neighbours]
        with torch.no_grad():
            out = model(self._images(neighbours))
        return (torch.softmax(out["logits"].float(), 1).view(b, k, -1), out["features"].float().view(b, k, -1))

    # ------------------------------------------------------------------ the step
    def training_step(self, model, batch, epoch):
        out = model(batch["image"])
        feats, logits = out["features"].float(), out["logits"].float()
        index, labels = batch["index"], batch["label"]
        neighbours = self.neighbours[index]
        p_k, f_k = self._neighbour_outputs(model, neighbours)
        zeta = self.calibration(feats, f_k)
        d = aggregate(p_k, self.similarity[index], zeta)
        learned = torch.sigmoid(self.theta[index])
        weight = torch.ones_like(learned) if epoch < self.cfg.warmup_epochs else learned  # warm-up: one-hot
        target = target_distribution(labels, weight, d)
        ce = -(target * F.log_softmax(logits, 1)).sum(1).mean()
        w = learned.detach()
        centre_loss = 0.5 * (w[:, None] * (feats - self.centres[labels]) ** 2).sum() / len(labels)
        loss = ce + self.cfg.gamma * centre_loss
        self.bank_probs[index] = torch.softmax(logits.detach(), 1)
        self.bank_feats[index] = feats.detach()
        return StepOutput(loss, logits, {"ce": ce.detach(), "centre_loss": centre_loss.detach(),
                                         "mean_weight": w.mean()},
                          extras={"feats": feats.detach(), "neighbour_feats": f_k, "neighbours": neighbours,
                                  "weight": w})

    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.lambda_optimizer]

    @torch.no_grad()
    def after_step(self, model, batch, out: StepOutput, epoch: int) -> None:
        """Class centres: the public code's manual SGD step (pull), then the push-apart step."""
        x = torch.cat([out.extras["feats"], out.extras["neighbour_feats"].reshape(-1, self.centres.shape[1])])
        y = torch.cat([batch["label"], self.train_labels[out.extras["neighbours"].flatten()]])
        w = torch.sigmoid(self.theta[torch.cat([batch["index"], out.extras["neighbours"].flatten()])])
        onehot = F.one_hot(y, self.centres.shape[0]).float()
        pull = onehot.T @ (w[:, None] * (x - self.centres[y])) / (onehot.sum(0)[:, None] + 1) / len(y)
        self.centres += self.cfg.centre_lr * pull
        with torch.enable_grad():
            c = self.centres.clone().requires_grad_(True)
            sq = torch.cdist(c, c) ** 2
            off_diag = ~torch.eye(len(c), dtype=torch.bool, device=c.device)
            push = torch.exp(-sq[off_diag] / c.shape[1]).sum() / 2   # each unordered pair once, as i<j
            grad, = torch.autograd.grad(push, c)
        self.centres -= self.cfg.centre_lr * self.cfg.centre_push * grad

    def sample_exports(self) -> dict[str, np.ndarray]:
        weight = torch.sigmoid(self.theta.detach()).cpu().numpy()
        return {"label_weight": weight, "noise_score": 1 - weight}
