"""The model's optimiser and learning-rate schedule, with per-group learning rates.

Parameter groups: `backbone` (the model without its classifier), `classifier` (the layer giving
the logits: the model's fc, or a method's own classifier, e.g. RUL's) and `method` (every other
method parameter trained with the model: LDLVA's calibration MLP, RUL's heads, SCN's attention).
Each trains at optim.lr * optim.lr_mult.<group>: RUL's authors train the classifier at 10x.

Schedules, stepped every iteration: a linear warm-up, then
  cosine       lr * (min_lr_ratio + (1 - min_lr_ratio) (1 + cos(pi p)) / 2)
  exponential  lr * exp_gamma ** (p * exp_epochs), the papers' ExponentialLR(gamma) per epoch made
               smooth; with exp_epochs = the paper's epoch count a shortened run decays by as much
               in all as the paper's run (schedule shape kept)
  step         lr * step_gamma ** (milestones passed), milestones in epochs or fractions of training
with p in [0, 1] the progress after warm-up.
"""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from ldl.methods.base import Method
from ldl.schedule import to_epochs

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "exponential", "step")


def parameter_groups(cfg: DictConfig, model: nn.Module, method: Method) -> list[dict]:
    """The three groups, each with its learning rate; empty groups are left out."""
    classifier = method.classifier_parameters(model)
    owned = {id(p) for p in classifier}
    backbone = [p for p in model.parameters() if id(p) not in owned]
    own = [p for p in method.model_parameters() if id(p) not in owned]
    groups = {"backbone": backbone, "classifier": classifier, "method": own}
    return [{"params": params, "lr": cfg.optim.lr * cfg.optim.lr_mult[name], "name": name}
            for name, params in groups.items() if params]


def build_optimizer(cfg: DictConfig, model: nn.Module, method: Method) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = parameter_groups(cfg, model, method)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=True)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    raise ValueError(f"unknown optim.name '{o.name}' ({', '.join(OPTIMIZERS)})")


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine or exponential decay, as a factor on every group's own learning rate."""
    o = cfg.optim
    if o.schedule not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule '{o.schedule}' ({', '.join(SCHEDULES)})")
    total = max(1, o.epochs * steps_per_epoch)
    warmup = min(total - 1, int(to_epochs(o.warmup_epochs, o.epochs) * steps_per_epoch))
    floor = o.min_lr_ratio
    decay_epochs = o.exp_epochs if o.exp_epochs is not None else o.epochs
    milestones = [to_epochs(m, o.epochs) * steps_per_epoch for m in o.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(1, total - warmup), 1.0)
        if o.schedule == "exponential":
            return o.exp_gamma ** (progress * decay_epochs)
        if o.schedule == "step":
            return o.step_gamma ** sum(step >= m for m in milestones)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
