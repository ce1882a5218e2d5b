"""SCN, Self-Cure Network (Wang et al., CVPR 2020; public code kaiwang960112/Self-Cure-Network).

  alpha_i     = sigmoid(w^T f_i + b), a per-image importance weight from the pooled features
  logits_i    = alpha_i * fc(f_i)                      (logit-weighted CE)
  L_RR        = max(0, margin_1 - (mean_high(alpha) - mean_low(alpha))), the batch split into the
                top beta fraction and the rest by alpha                  (beta 0.7, margin_1 0.15)
  loss        = CE(logits, y) + L_RR
  relabel     once `relabel_start` epochs are complete (the public code: from its 10th epoch of 70,
              1-based, so 9/70 of training): if P_max - P_y > margin_2 (0.2), the sample's label
              becomes argmax P; relabelled labels persist (per-sample state, checkpointed)
The noise score 1 - alpha_i comes from the scoring pass (eval mode, un-augmented images); the
alpha of the last training pass (augmented, dropout and BatchNorm in training mode) is exported
beside it.  Evaluation uses the weighted logits as the public code does (the argmax is unaffected;
alpha > 0).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldl.methods.base import Method, MethodContext, StepOutput, register_method


def rank_regularisation(alpha: torch.Tensor, beta: float, margin: float) -> torch.Tensor:
    top = max(1, int(len(alpha) * beta))
    ordered = alpha.sort(descending=True).values
    high, low = ordered[:top].mean(), ordered[top:].mean() if top < len(alpha) else ordered[-1:].mean()
    return F.relu(margin - (high - low))


@register_method("scn")
class SCN(Method):
    # src/train.py: Adam at torch's default lr 1e-3 (--lr is passed only to SGD), weight decay 1e-4,
    # one group, batch 64, 70 epochs, ExponentialLR(0.9) per epoch; RandomErasing(scale=(0.02, 0.25))
    # at p = 0.5, no crops (224 px resized).  Its "basic_aug" picks, with p = 0.5, either a flip or
    # Gaussian noise (var 30), so it flips with p = 0.25; here flips have p = 0.5 and no noise is added.
    PAPER_RECIPE = {
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64, "warmup_epochs": 0,
                  "schedule": "exponential", "exp_gamma": 0.9, "exp_epochs": 70},
        "data": {"augment": {"flip": True, "pad_crop": 0, "erase_p": 0.5}},
        "method": {"scn": {"beta": 0.7, "margin_1": 0.15, "margin_2": 0.2, "relabel_start": "9/70"}},
    }
    per_sample_buffers = ("labels", "alpha")

    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
        self.relabel_start = self.schedule(cfg.relabel_start)
        self.attention = nn.Linear(ctx.feature_dim, 1)
        labels = torch.from_numpy(ctx.train_data.labels) if ctx.train_data is not None else torch.zeros(ctx.num_train)
        self.register_buffer("labels", labels.long().clone())
        self.register_buffer("alpha", torch.ones(ctx.num_train))

    def _weighted(self, model, images):
        out = model(images)
        alpha = torch.sigmoid(self.attention(out["features"]).float()).squeeze(1)  # float32 under autocast too
        return alpha, alpha[:, None] * out["logits"].float()

    def training_step(self, model, batch, epoch):
        alpha, logits = self._weighted(model, batch["image"])
        labels = self.labels[batch["index"]]
        rr = rank_regularisation(alpha, self.cfg.beta, self.cfg.margin_1)
        ce = F.cross_entropy(logits, labels)
        return StepOutput(ce + rr, logits, {"ce": ce.detach(), "rank_reg": rr.detach()}, {"alpha": alpha.detach()})

    @torch.no_grad()
    def after_step(self, model, batch, out, epoch):
        index = batch["index"]
        self.alpha[index] = out.extras["alpha"]
        if self.progress(epoch) >= self.relabel_start:
            probs = torch.softmax(out.logits.detach(), 1)
            p_max, predicted = probs.max(1)
            p_given = probs.gather(1, self.labels[index][:, None]).squeeze(1)
            relabel = p_max - p_given > self.cfg.margin_2
            self.labels[index[relabel]] = predicted[relabel]

    @torch.no_grad()
    def predict(self, model, images):
        return self._weighted(model, images)[1]

    @torch.no_grad()
    def score(self, model, images):
        alpha, logits = self._weighted(model, images)
        return logits, {"noise_score": 1 - alpha}

    def sample_exports(self):
        alpha = self.alpha.cpu().numpy()
        return {"train_pass_attention": alpha, "train_pass_noise_score": 1 - alpha,
                "mined_label": self.labels.cpu().numpy().astype(np.int64)}



