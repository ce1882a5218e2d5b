"""The small interface through which the engine knows every method.

A method is an nn.Module: its parameters (e.g. a calibration MLP) train with the model's
optimiser, and its per-sample learned state (LDLVA's uncertainty, SLM's mined labels) lives
in parameters or buffers indexed by training-sample index, so it is checkpointed with
`state_dict()` and restored on resume.  Per-sample parameters that need their own optimiser
are returned by `extra_optimizers()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ldl.data.dataset import FERData
from ldl.schedule import to_epochs


@dataclass
class MethodContext:
    """What a method may know when it is built.  `train_data` is None when a method is only
    rebuilt to evaluate a checkpoint: constructors must then only allocate state."""
    num_classes: int
    num_train: int
    feature_dim: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    device: torch.device
    feature_map_size: int = 1          # side of the backbone's last feature map
    train_data: FERData | None = None  # labels as trained on (possibly noisy), aux spaces, names
    train_images: torch.Tensor | None = None  # the loader's uint8 NHWC images when resident on the GPU


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)  # detached tensors: no host sync
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """Plain cross-entropy; every other method overrides what it changes."""

    name = "ce"
    uses_model_head = True   # False when the method classifies with its own head (DDP must then
                             # expect unused parameters)
    per_sample_buffers: tuple[str, ...] = ()  # [N, ...] state written at the batch's indices
    shared_buffers: tuple[str, ...] = ()      # global state every rank updates (averaged, as are
                                              # the buffers of submodules, e.g. BatchNorm statistics)
    flip_view = False   # True: training batches also carry image_flipped, erased independently (EAC)

    # The authors' recipe, applied on top of the config under `protocol: paper` (see ldl.config):
    # optimiser, per-group learning rates, batch, augmentation, schedule shape.  Empty: the
    # shared recipe is the method's own (CE).
    PAPER_RECIPE: dict = {}

    def __init__(self, cfg: DictConfig, ctx: MethodContext):
        super().__init__()
        self.cfg, self.num_classes = cfg, ctx.num_classes
        self.total_epochs, self.steps_per_epoch = ctx.epochs, max(1, ctx.steps_per_epoch)
        self.step_in_epoch = 0   # set by the engine before each step

    def progress(self, epoch: int) -> float:
        """Training progress in epochs at the current step (epoch 2, step 50 of 100: 2.5), the
        clock of every schedule (see ldl.schedule)."""
        return epoch + self.step_in_epoch / self.steps_per_epoch

    def schedule(self, value: float | str) -> float:
        """A schedule setting (epochs, 'a/b' or 'p%' of training) in epochs of this run."""
        return to_epochs(value, self.total_epochs)

    def training_step(self, model: nn.Module, batch: dict, epoch: int) -> StepOutput:
        out = model(batch["image"])
        return StepOutput(F.cross_entropy(out["logits"], batch["label"]), out["logits"])

    @torch.no_grad()
    def predict(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits at evaluation; must not depend on the other images in the batch."""
        return model(images)["logits"]

    @torch.no_grad()
    def score(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eval-mode logits and per-sample scores for un-augmented training images (the scoring
        pass after each epoch and at the end).  A method whose noise score comes from the network
        (SCN's attention, RUL's uncertainty) returns it as 'noise_score' (higher = more likely
        mislabelled); learned per-sample state (LDLVA's l_i, SLM's mined labels) needs no pass
        and is exported by `sample_exports`."""
        return self.predict(model, images), {}

    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        return []

    def classifier_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The layer that gives the logits (its own learning rate: optim.lr_mult.classifier)."""
        return list(unwrap(model).fc.parameters())

    def model_parameters(self) -> list[nn.Parameter]:
        """Method parameters trained by the model's optimiser (all but per-sample ones)."""
        owned = {id(p) for opt in self.extra_optimizers() for g in opt.param_groups for p in g["params"]}
        return [p for p in self.parameters() if id(p) not in owned]

    def after_step(self, model: nn.Module, batch: dict, out: StepOutput, epoch: int) -> None:
        """Called after the optimisers stepped (e.g. SLM's label update)."""

    def on_train_start(self, model: nn.Module, train_data: FERData) -> None:
        """Once before the first epoch of a fresh run (not on resume): e.g. neighbour search."""

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        pass

    @torch.no_grad()
    def synchronise(self, index: torch.Tensor) -> None:
        """Under torchrun, make every rank's state equal after a step: method gradients are
        averaged before the optimisers step (see `average_gradients`); here the rows each rank
        wrote are gathered from all ranks, and shared buffers are averaged."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return
        world = dist.get_world_size()
        indices = [torch.empty_like(index) for _ in range(world)]
        dist.all_gather(indices, index)
        for name in self.per_sample_buffers:
            buf = getattr(self, name)
            rows = [torch.empty_like(buf[index]) for _ in range(world)]
            dist.all_gather(rows, buf[index].contiguous())
            buf[torch.cat(indices)] = torch.cat(rows)
        shared = [getattr(self, name) for name in self.shared_buffers]
        shared += [buf for name, buf in self.named_buffers() if "." in name and buf.is_floating_point()]
        for buf in shared:
            dist.all_reduce(buf)
            buf /= world

    def average_gradients(self) -> None:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return
        for p in self.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()

    def sample_exports(self) -> dict[str, np.ndarray]:
        """Per-training-sample outputs to export; 'noise_score' (higher = more likely mislabelled)
        is scored as a noise detector when clean labels are known."""
        return {}


def unwrap(model: nn.Module) -> nn.Module:
    """The FERNet inside a DDP (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c target_c log softmax(logits)_c."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


METHODS: dict[str, Callable[[DictConfig, MethodContext], Method]] = {"ce": Method}


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return wrap


def build_method(cfg: DictConfig, ctx: MethodContext) -> Method:
    import ldl.methods  # noqa: F401  (registers every method)
    name = cfg.method.name
    if name not in METHODS:
        raise ValueError(f"unknown method.name '{name}'; available: {sorted(METHODS)}")
    section = cfg.method.get(name, DictConfig({}))
    return METHODS[name](section, ctx).to(ctx.device)
