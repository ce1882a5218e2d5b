"""SLM-AEA: soft-label mining with adaptive embedding augmentation (public code
HaipengMing/SLM-AEA; the settings below are that code's defaults).

Recipe (PAPER_RECIPE): Adam 1e-3 without weight decay, batch 72, 40 epochs, per-iteration cosine to
1e-6, flips and crops, no erasing; beta = 7 of 40 epochs.

Soft-label mining.  Every training sample keeps label logits z_i, initialised to k = 5 on the
given class and log(e^k (1 - p) / p / (C - 1)) elsewhere, so softmax(z_i) puts p = 0.97 on it.
The network trains with soft CE against q_i = softmax(z_i).  After each step z_i takes a gradient
step of size lam = 200 on
  w_u(t) CE(z_i -> p_hat_i) + w_d(t) CE(z_i -> y_i)      (batch mean, so the step is 200 / B)
i.e. z_i -= lam / B * (w_u (q_i - p_hat_i) + w_d (q_i - onehot(y_i))), with p_hat the detached
prediction, t the training progress in epochs (0-based, per iteration, as the public code's
num_iter / num_steps), and ramps (alpha = 1.6, beta = 7 epochs, or a fraction of training)
  w_u = exp(-(alpha - t / beta)^2) for t <= beta, else 1
  w_d = 1 for t <= beta, else exp(-(alpha - beta / t)^2).

AEA.  The pooled embedding becomes h + w * mean_batch(h) (w learnable, init 1) before the
classifier.  The public code also uses the batch mean at test time, so a prediction depends
on the test batch; here evaluation uses a running mean of the training batch means (momentum
0.1, as BatchNorm), so a sample's prediction does not depend on its batch mates.

Mined labels are exported (q and argmax q); 1 - q_i(y_i) is the noise score.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldl.methods.base import Method, MethodContext, StepOutput, register_method, soft_cross_entropy, unwrap


def ramp_up(t: float, alpha: float, beta: float) -> float:
    return math.exp(-(alpha - t / beta) ** 2) if t <= beta else 1.0


def ramp_down(t: float, alpha: float, beta: float) -> float:
    return 1.0 if t <= beta else math.exp(-(alpha - beta / t) ** 2)


def initial_logits(labels: torch.Tensor, num_classes: int, k: float, p: float) -> torch.Tensor:
    off = math.log(math.exp(k) * (1 - p) / p / (num_classes - 1))
    z = torch.full((len(labels), num_classes), off)
    z[torch.arange(len(labels)), labels] = k
    return z


def mining_step(z: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, w_u: float, w_d: float,
                lam: float) -> torch.Tensor:
    """One gradient step on the batch-mean loss w_u CE(z -> pred) + w_d CE(z -> y)."""
    q = torch.softmax(z, 1)
    onehot = F.one_hot(labels, z.shape[1]).to(z.dtype)
    grad = (w_u * (q - pred) + w_d * (q - onehot)) / len(z)
    return z - lam * grad


@register_method("slm_aea")
class SLMAEA(Method):
    # main.py: Adam(net.parameters(), lr=1e-3) (the parsed weight decay is never used), batch 72,
    # 40 epochs, cosine per iteration to lr_min 1e-6; Resize 256 + RandomCrop 224, flips, no erasing.
    PAPER_RECIPE = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 72, "warmup_epochs": 0,
                  "schedule": "cosine", "min_lr_ratio": 1e-3},
        "data": {"augment": {"flip": True, "erase_p": 0.0}},
        "method": {"slm_aea": {"k": 5.0, "p": 0.97, "lam": 200.0, "alpha": 1.6, "beta": "7/40", "aea": True}},
    }
    per_sample_buffers = ("label_logits",)
    shared_buffers = ("running_mean",)

    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
        labels = torch.from_numpy(ctx.train_data.labels) if ctx.train_data is not None else torch.zeros(ctx.num_train, dtype=torch.long)
        self.register_buffer("given_labels", labels.long().clone())
        self.register_buffer("label_logits", initial_logits(labels.long(), ctx.num_classes, cfg.k, cfg.p))
        self.beta = self.schedule(cfg.beta)
        self.aea = cfg.aea
        self.aea_weight = nn.Parameter(torch.ones(ctx.feature_dim))
        self.register_buffer("running_mean", torch.zeros(ctx.feature_dim))

    def augmented_logits(self, model, features: torch.Tensor, batch_mean: torch.Tensor) -> torch.Tensor:
        return unwrap(model).fc(features + self.aea_weight * batch_mean)

    def training_step(self, model, batch, epoch):
        out = model(batch["image"])
        logits = out["logits"]
        if self.aea:
            feats = out["features"]
            mean = feats.mean(0)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().float(), self.cfg.running_momentum)
            logits = self.augmented_logits(model, feats, mean)
        target = torch.softmax(self.label_logits[batch["index"]], 1)
        return StepOutput(soft_cross_entropy(logits.float(), target), logits.float())

    @torch.no_grad()
    def after_step(self, model, batch, out, epoch):
        t = self.progress(epoch)
        index = batch["index"]
        w_u, w_d = ramp_up(t, self.cfg.alpha, self.beta), ramp_down(t, self.cfg.alpha, self.beta)
        pred = torch.softmax(out.logits.detach().float(), 1)
        self.label_logits[index] = mining_step(self.label_logits[index], pred, batch["label"], w_u, w_d, self.cfg.lam)

    @torch.no_grad()
    def predict(self, model, images):
        out = model(images)
        if not self.aea:
            return out["logits"]
        return self.augmented_logits(model, out["features"], self.running_mean.to(out["features"].dtype))

    def sample_exports(self):
        q = torch.softmax(self.label_logits, 1)
        given = q.gather(1, self.given_labels[:, None]).squeeze(1)
        return {"mined": q.cpu().numpy(), "mined_label": q.argmax(1).cpu().numpy().astype(np.int64),
                "noise_score": (1 - given).cpu().numpy()}
