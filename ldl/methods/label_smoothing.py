"""Label smoothing (Szegedy et al., CVPR 2016): CE against (1 - eps) onehot(y) + eps / C."""
from __future__ import annotations

import torch.nn.functional as F

from ldl.methods.base import Method, StepOutput, register_method, soft_cross_entropy


@register_method("label_smoothing")
class LabelSmoothing(Method):
    def smoothed_target(self, labels):
        eps = float(self.cfg.epsilon)
        return (1 - eps) * F.one_hot(labels, self.num_classes).float() + eps / self.num_classes

    def training_step(self, model, batch, epoch):
        out = model(batch["image"])
        return StepOutput(soft_cross_entropy(out["logits"], self.smoothed_target(batch["label"])), out["logits"])
