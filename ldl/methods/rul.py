"""RUL, Relative Uncertainty Learning (Zhang et al., NeurIPS 2021; public code
zyh-uaiaaaa/Relative-Uncertainty-Learning).

On the backbone's feature map two heads (BN2d without affine -> dropout 0.4 -> flatten ->
Linear -> BN1d, 64-d) give an embedding mu_i and a log-variance s_i (the code's `log_var`);
u_i = mean(exp(s_i)) is the sample's learned uncertainty.  Pairs (i, j = a random permutation of
the batch) are mixed with the uncertainties as weights (src/utils.py, mixup_data):
  w_i = u_i / (u_i + u_j),  z = w_i mu_i + w_j mu_j,  loss = 0.5 CE(fc(z), y_i) + 0.5 CE(fc(z), y_j)
(the add-up loss: 0.5 / 0.5, not the weights; no other term).  For z to stay classifiable as
both labels, the sample whose embedding carries its label weakly must take the larger share,
so a hard or mislabelled sample learns a LARGE u_i: u_i is an uncertainty, not a confidence
(the authors, issue #5 of their repository: the mean of exp(log_var) "represents the learned
uncertainty value").  At evaluation the prediction is fc(mu_i).  The public code trains
backbone and heads at lr 2e-4 and the classifier at 2e-3 (PAPER_RECIPE: optim.lr_mult.classifier
= 10).  The noise score is log u_i (higher = more likely mislabelled), from the scoring pass
(eval mode: no dropout, un-augmented images); the last training pass's u_i and log u_i are
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


def relative_mix(mu: torch.Tensor, uncertainty: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed embeddings and the weight w_i = u_i / (u_i + u_perm(i)) of sample i in each pair."""
    w = uncertainty / (uncertainty + uncertainty[perm])
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
    per_sample_buffers = ("uncertainty",)

    def __init__(self, cfg, ctx: MethodContext):
        super().__init__(cfg, ctx)
        side = ctx.feature_map_size
        self.mu = _head(ctx.feature_dim, side, cfg.embed_dim, cfg.dropout)
        self.log_var = _head(ctx.feature_dim, side, cfg.embed_dim, cfg.dropout)
        self.classifier = nn.Linear(cfg.embed_dim, ctx.num_classes)
        self.register_buffer("uncertainty", torch.ones(ctx.num_train))
        self.uses_model_head = False

    def training_step(self, model, batch, epoch):
        fmap = model(batch["image"], return_map=True)["feature_map"].float()
        mu, uncertainty = self.mu(fmap).float(), self.log_var(fmap).float().exp().mean(1)  # float32 under autocast
        perm = torch.randperm(len(mu), device=mu.device)
        mixed, _ = relative_mix(mu, uncertainty, perm)
        logits = self.classifier(mixed).float()
        labels = batch["label"]
        loss = 0.5 * F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(logits, labels[perm])
        return StepOutput(loss, logits, {"mean_uncertainty": uncertainty.mean().detach()},
                          {"uncertainty": uncertainty.detach()})

    @torch.no_grad()
    def after_step(self, model, batch, out, epoch):
        self.uncertainty[batch["index"]] = out.extras["uncertainty"]

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # Checkpoints written before the rename hold the same u_i as 'confidence' and the head
        # as 'log_scale'.
        for old, new in (("confidence", "uncertainty"), ("log_scale.", "log_var.")):
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def classifier_parameters(self, model):
        return list(self.classifier.parameters())

    @torch.no_grad()
    def predict(self, model, images):
        return self.score(model, images)[0]

    @torch.no_grad()
    def score(self, model, images):
        fmap = model(images, return_map=True)["feature_map"].float()
        uncertainty = self.log_var(fmap).float().exp().mean(1)
        return self.classifier(self.mu(fmap)).float(), {"noise_score": torch.log(uncertainty.clamp(min=1e-12))}

    def sample_exports(self):
        uncertainty = self.uncertainty.clamp(min=1e-12)
        return {"train_pass_uncertainty": uncertainty.cpu().numpy(),
                "train_pass_noise_score": torch.log(uncertainty).cpu().numpy()}
