"""One-vs-rest binary classifiers (the AffectNet+ teacher's EBC members): C independent binary
heads on one backbone, each trained with binary cross-entropy against [y == c].  Sharing the
backbone across the C binary problems is our simplification of AffectNet+'s separately
trained binary classifiers; the heads stay independent (no softmax coupling)."""
from __future__ import annotations

import torch.nn.functional as F

from ldl.methods.base import Method, StepOutput, register_method


@register_method("ovr")
class OneVsRest(Method):
    def training_step(self, model, batch, epoch):
        logits = model(batch["image"])["logits"].float()
        targets = F.one_hot(batch["label"], logits.shape[1]).float()
        # Sum over the C binary problems, mean over the batch.
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()
        return StepOutput(loss, logits)
