"""SCN, Self-Cure Network (Wang et al., CVPR 2020; public code kaiwang960112/Self-Cure-Network).

  alpha_i     = sigmoid(w^T f_i + b), a per-image importance weight from the pooled features
  logits_i    = alpha_i * fc(f_i)                      (logit-weighted CE)
  L_RR        = max(0, margin_1 - (mean_high(alpha) - mean_low(alpha))), the batch split into the
                top beta fraction and the rest by alpha                  (beta 0.7, margin_1 0.15)
  loss        = CE(logits, y) + L_RR
  relabel     from epoch `relabel_epoch` (10): if P_max - P_y > margin_2 (0.2), the sample's label
              becomes argmax P; relabelled labels persist (per-sample state, checkpointed)
1 - alpha_i (the last one seen) is exported as the sample's noise score.  Evaluation uses the
weighted logits as the public code does (the argmax is unaffected; alpha > 0).
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
    per_sample_buffers = ("labels", "alpha")
    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
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
        if epoch + 1 >= self.cfg.relabel_epoch:
            probs = torch.softmax(out.logits.detach(), 1)
            p_max, predicted = probs.max(1)
            p_given = probs.gather(1, self.labels[index][:, None]).squeeze(1)
            relabel = p_max - p_given > self.cfg.margin_2
            self.labels[index[relabel]] = predicted[relabel]

    @torch.no_grad()
    def predict(self, model, images):
        return self._weighted(model, images)[1]

    def sample_exports(self):
        return {"attention": self.alpha.cpu().numpy(), "noise_score": 1 - self.alpha.cpu().numpy(),
                "mined_label": self.labels.cpu().numpy().astype(np.int64)}



