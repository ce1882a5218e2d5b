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
              theta_i initialised to the public code's lamb_init, a logit (RAF-DB 0.5: l_i starts
              at 0.62; AffectNet 0.8: 0.69), optimised by its own SGD (lr 10; momentum 0 on RAF-DB,
              0.9 on AffectNet) that, like TF's sparse update, moves only the batch's rows
  loss        CE(t_i, p_i) + gamma L_D, gamma = 0.01; on AffectNet the CE is class-weighted
              (`class_weights`: w_c = N / (C n_c), sklearn's "balanced"; the weighted sum over the
              batch is divided by B, as the public code's create_sample_weights + CELoss do)
  L_D         public code's discriminative loss (src/utils.py) over the batch AND its K neighbours:
              0.5 * sum_{j in batch + neighbours} l_j ||f_j - c_{y_j}||^2 / (B (1 + K)), l_j detached,
              y_j the given labels; the neighbours' features carry no gradient (computed outside
              the GradientTape), so the gradient on a batch feature is l_i (f_i - c_{y_i}) / (B (1+K)).
              Class centres c (zero-initialised) move by their own SGD (lr 0.5) toward their
              samples and apart by 0.1 * grad of sum_{j!=k} exp(-||c_j - c_k||^2 / D)
1 - l_i is the sample's label uncertainty: exported per sample and scored as a noise detector.

Recipe (PAPER_RECIPE, config_resnet18_raf.py): Adam 1e-3 without weight decay, batch 32, 60 epochs
with the lr x 0.1 at epochs 10, 20 and 40, random erasing p = 0.5 (its area 2-30 % of the image;
here 2-25 %, torchvision's default), neighbours un-erased, the l1 similarity.

Warm-up (not in the paper): for `warmup_epochs` (epochs or a fraction of training) the target is
the one-hot label and the weights l_i stay frozen.  The paper starts from MS-Celeb weights, so the neighbours' predictions
mean something from the first step; from random weights they are the network's own guesses, and
d loss / d l_i = sum_c d_ic log p_ic - log p_iy > 0 for every sample the untrained network does
not predict, so l falls, the target becomes the network's prediction and training can collapse
to the majority class.  Default 0 (the paper); the from-scratch synthetic configs use 1.

`space=landmarks` searches neighbours in the AU proxy's facial geometry of the 68 landmarks
(ldl/teacher/au_proxy.py), for datasets without VA: their own landmarks or `ldl landmarks`'s.

Neighbours in feature space (`space=features`) are first searched in the starting network's
features; they are searched again at the first epoch boundary after the warm-up and every
`refresh_every` epochs (default off), the similarities with them.  The neighbour table is a
buffer, so checkpoints and resumes keep the current one.

Modes.  faithful: neighbour images are forwarded through the network at every step (no grad),
so a batch of B costs (K+1)B forward images, as in the paper; they are gathered from the
GPU-resident dataset when there is one.  fast: neighbour predictions and
features come from a per-sample memory bank refreshed whenever a sample is in a batch; the bank
is filled once before training and is part of the checkpoint.
"""
from __future__ import annotations

import math

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


def landmark_space(data: FERData) -> np.ndarray:
    """The AU proxy's facial-geometry features of the 68 landmarks, standardised and scaled by
    1/sqrt(dim) so that distances are on the VA square's scale (delta keeps its meaning)."""
    from ldl.teacher.au_proxy import landmark_features
    feats = landmark_features(data.landmarks, "method.ldlva.space=landmarks (the training split)")
    z = (feats - feats.mean(0)) / feats.std(0).clip(min=1e-6)
    return (z / np.sqrt(z.shape[1])).astype(np.float32)


def aggregate(prob_neighbours: torch.Tensor, similarity: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """d_i = sum_k c_ik p_k / sum_k c_ik with c_ik = s_ik zeta_ik."""
    c = similarity * zeta
    return (c[..., None] * prob_neighbours).sum(1) / c.sum(1, keepdim=True).clamp(min=1e-12)


def target_distribution(labels: torch.Tensor, weight: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
    """t_i = l_i onehot(y_i) + (1 - l_i) d_i."""
    onehot = F.one_hot(labels, aggregated.shape[1]).to(aggregated.dtype)
    return weight[:, None] * onehot + (1 - weight[:, None]) * aggregated


class RowSparseSGD(torch.optim.Optimizer):
    """SGD with momentum on per-sample parameters that moves only the rows with a gradient this
    step (the batch's samples), as TF's sparse update does for the public code's gathered lambda
    (ResourceSparseApplyKerasMomentum).  torch's dense SGD would keep moving every theta_i by its
    momentum long after its sample was last seen.  A visited row whose gradient is exactly 0 counts
    as unvisited (it then keeps its momentum instead of applying it)."""

    def __init__(self, params, lr: float, momentum: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows = p.grad.ne(0).reshape(len(p), -1).any(1).nonzero().squeeze(1)
                update = p.grad[rows]
                if group["momentum"]:
                    buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                    buffer[rows] = group["momentum"] * buffer[rows] + update
                    update = buffer[rows]
                p[rows] -= group["lr"] * update


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """sklearn's compute_class_weight('balanced'): w_c = N / (C n_c) over the classes present."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def discriminative_loss(feats: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
                        neighbour_feats: torch.Tensor, neighbour_labels: torch.Tensor,
                        neighbour_weight: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """0.5 * sum_j l_j ||f_j - c_{y_j}||^2 / (B (1 + K)) over the batch [B, D] and its neighbours
    [B, K, D]; only the batch rows carry gradient (the public code's DCM loss)."""
    b, k, d = neighbour_feats.shape
    batch_term = (weight[:, None] * (feats - centres[labels]) ** 2).sum()
    nf, nl = neighbour_feats.reshape(b * k, d).detach(), neighbour_labels.flatten()
    neighbour_term = (neighbour_weight.flatten()[:, None] * (nf - centres[nl]) ** 2).sum()
    return 0.5 * (batch_term + neighbour_term) / (b * (1 + k))


@register_method("ldlva")
class LDLVA(Method):
    PAPER_RECIPE = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 32, "warmup_epochs": 0,
                  "schedule": "step", "milestones": ["10/60", "20/60", "40/60"], "step_gamma": 0.1},
        "data": {"augment": {"flip": True, "erase_p": 0.5}},
        "method": {"ldlva": {"k": 8, "similarity": "l1", "l1_scale": 0.5, "gamma": 0.01, "init_logit": 0.5,
                             "lambda_lr": 10.0, "lambda_momentum": 0.0, "class_weights": False}},
    }
    per_sample_buffers = ("bank_probs", "bank_feats")
    shared_buffers = ("centres",)

    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
        if cfg.mode not in ("fast", "faithful"):
            raise ValueError(f"method.ldlva.mode must be 'fast' or 'faithful', got {cfg.mode!r}")
        n, c, d, k = ctx.num_train, ctx.num_classes, ctx.feature_dim, cfg.k
        self.warmup = self.schedule(cfg.warmup_epochs)
        self.refresh_every = self.schedule(cfg.refresh_every) if cfg.refresh_every is not None else None
        self.theta = nn.Parameter(torch.full((n,), float(cfg.init_logit)))
        self.lambda_optimizer = RowSparseSGD([self.theta], lr=cfg.lambda_lr, momentum=cfg.lambda_momentum)
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
        weights = (balanced_class_weights(ctx.train_data.labels, c) if cfg.class_weights and ctx.train_data is not None
                   else np.ones(c))
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.train_data = ctx.train_data

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
        if space == "landmarks":
            return landmark_space(data)
        raise ValueError(f"method.ldlva.space must be va, soft, features or landmarks, got {space!r}")

    def search_neighbours(self, model: nn.Module, train_data: FERData) -> None:
        aux = self.auxiliary_space(model, train_data)
        neighbours = knn(aux, self.cfg.k, self.cfg.knn_backend)
        scale = self.cfg.delta if self.cfg.similarity == "gaussian" else self.cfg.l1_scale
        self.neighbours.copy_(torch.from_numpy(neighbours))
        self.similarity.copy_(torch.from_numpy(local_similarity(aux, neighbours, self.cfg.similarity, scale)))

    def refreshes_at(self, epoch: int) -> bool:
        """Feature-space neighbours are searched again at the first epoch boundary after the
        warm-up and every `refresh_every` epochs."""
        if self.cfg.space != "features" or epoch == 0:
            return False
        after_warmup = self.warmup > 0 and epoch == math.ceil(self.warmup)
        periodic = self.refresh_every is not None and epoch % max(1, round(self.refresh_every)) == 0
        return after_warmup or periodic

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        if self.refreshes_at(epoch):
            self.search_neighbours(model, self.train_data)

    def on_train_start(self, model: nn.Module, train_data: FERData) -> None:
        self.search_neighbours(model, train_data)
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
        warming_up = self.progress(epoch) < self.warmup
        weight = torch.ones_like(learned) if warming_up else learned  # warm-up: one-hot
        target = target_distribution(labels, weight, d)
        ce = (self.class_weights[labels] * -(target * F.log_softmax(logits, 1)).sum(1)).mean()
        w = learned.detach()
        w_k = torch.sigmoid(self.theta.detach()[neighbours])
        centre_loss = discriminative_loss(feats, labels, w, f_k, self.train_labels[neighbours], w_k, self.centres)
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
