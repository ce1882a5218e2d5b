"""RUL, Relative Uncertainty Learning (Zhang et al., NeurIPS 2021; public code
zyh-uaiaaaa/Relative-Uncertainty-Learning).

On the backbone's feature map two heads (BN2d without affine -> dropout 0.4 -> flatten ->
Linear -> BN1d, 64-d) give an embedding mu_i and a log-scale s_i; a_i = mean(exp(s_i)) is the
sample's confidence.  Pairs (i, j = a random permutation of the batch) are mixed:
  w_i = a_i / (a_i + a_j),  z = w_i mu_i + w_j mu_j,  loss = 0.5 CE(fc(z), y_i) + 0.5 CE(fc(z), y_j)
so a sample whose label the network finds hard to fit learns a small a_i.  At evaluation the
prediction is fc(mu_i).  The public code trains backbone and heads at lr 2e-4 and the classifier at
2e-3 (PAPER_RECIPE: optim.lr_mult.classifier = 10).  The noise score -log a_i comes from the
scoring pass (eval mode: no dropout, un-augmented images); the last training pass's a_i is
exported beside it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldl.methods.base import Method, MethodContext, StepOutput, register_method


def _head(channels: int, side: int, dim: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=2e-5, affine=False), nn.Dropout(drop), nn.Flatten(),
                         nn.Linear(channels * side * side, dim), nn.BatchNorm1d(dim, eps=2e-5))


def relative_mix(mu: torch.Tensor, confidence: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed embeddings and the weight w_i of sample i in each pair."""
    w = confidence / (confidence + confidence[perm])
    return w[:, None] * mu + (1 - w[:, None]) * mu[perm], w


@register_method("rul")
class RUL(Method):
    # src/main.py: Adam([{res18 incl. heads}, {fc, lr 0.002}], lr=0.0002, weight_decay=1e-4), batch 64,
    # 60 epochs, ExponentialLR(0.9) per epoch; RandomErasing(scale=(0.02, 0.25)) at p = 0.5; SCN's
    # flip-or-noise augmentation (flips at p = 0.25; here p = 0.5 and no noise).
    PAPER_RECIPE = {
        "optim": {"name": "adam", "lr": 2e-4, "weight_decay": 1e-4, "batch_size": 64, "warmup_epochs": 0,
                  "schedule": "exponential", "exp_gamma": 0.9, "exp_epochs": 60,
                  "lr_mult": {"backbone": 1.0, "classifier": 10.0, "method": 1.0}},
        "data": {"augment": {"flip": True, "pad_crop": 0, "erase_p": 0.5}},
        "method": {"rul": {"embed_dim": 64, "dropout": 0.4}},
    }
    per_sample_buffers = ("confidence",)

    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
        side = ctx.feature_map_size
        self.mu = _head(ctx.feature_dim, side, cfg.embed_dim, cfg.dropout)
        self.log_scale = _head(ctx.feature_dim, side, cfg.embed_dim, cfg.dropout)
        self.classifier = nn.Linear(cfg.embed_dim, ctx.num_classes)
        self.register_buffer("confidence", torch.ones(ctx.num_train))
        self.uses_model_head = False

    def training_step(self, model, batch, epoch):
        fmap = model(batch["image"], return_map=True)["feature_map"].float()
        mu, confidence = self.mu(fmap).float(), self.log_scale(fmap).float().exp().mean(1)  # float32 under autocast
        perm = torch.randperm(len(mu), device=mu.device)
        mixed, _ = relative_mix(mu, confidence, perm)
        logits = self.classifier(mixed).float()
        labels = batch["label"]
        loss = 0.5 * F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(logits, labels[perm])
        return StepOutput(loss, logits, {"mean_confidence": confidence.mean().detach()}, {"confidence": confidence.detach()})

    @torch.no_grad()
    def after_step(self, model, batch, out, epoch):
        self.confidence[batch["index"]] = out.extras["confidence"]

    def classifier_parameters(self, model):
        return list(self.classifier.parameters())

    @torch.no_grad()
    def predict(self, model, images):
        return self.score(model, images)[0]

    @torch.no_grad()
    def score(self, model, images):
        fmap = model(images, return_map=True)["feature_map"].float()
        confidence = self.log_scale(fmap).float().exp().mean(1)
        return self.classifier(self.mu(fmap)).float(), {"noise_score": -torch.log(confidence.clamp(min=1e-12))}

    def sample_exports(self):
        confidence = self.confidence.clamp(min=1e-12)
        return {"train_pass_confidence": confidence.cpu().numpy(),
                "train_pass_noise_score": -torch.log(confidence).cpu().numpy()}
