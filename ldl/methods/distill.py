"""Students of the soft-label teacher (AffectNet+ style).

target_i = (1 - hard_weight) * soft_i + hard_weight * onehot(y_i), trained with soft CE; soft_i
is the teacher's soft label (AffectNet+ `soft-label`).  Subset-aware training: each subset
(0 easy, 1 challenging, 2 difficult) has a loss weight, and a curriculum can hold a subset out
until a given epoch (`subset_start_epoch`), so training starts from the easy samples.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ldl.methods.base import Method, StepOutput, register_method


@register_method("distill")
class Distill(Method):
    def subset_weights(self, subset: torch.Tensor | None, epoch: int, n: int, device) -> torch.Tensor:
        if subset is None:
            return torch.ones(n, device=device)
        weights = torch.tensor(list(self.cfg.subset_weights), dtype=torch.float32, device=device)
        started = torch.tensor([epoch >= e for e in self.cfg.subset_start_epoch], device=device)
        return (weights * started)[subset]

    def training_step(self, model, batch, epoch):
        if "soft" not in batch:
            raise ValueError("method.name=distill needs teacher soft labels: use data.name=affectnet_plus "
                             "with the output of `ldl teacher label`")
        logits = model(batch["image"])["logits"].float()
        soft = batch["soft"][:, : logits.shape[1]]
        soft = soft / soft.sum(1, keepdim=True)
        hard = F.one_hot(batch["label"], logits.shape[1]).float()
        target = (1 - self.cfg.hard_weight) * soft + self.cfg.hard_weight * hard
        per_sample = -(target * F.log_softmax(logits, 1)).sum(1)
        w = self.subset_weights(batch.get("subset"), epoch, len(logits), logits.device)
        loss = (w * per_sample).sum() / w.sum().clamp(min=1e-12)
        return StepOutput(loss, logits, {"active_fraction": (w > 0).float().mean()})
