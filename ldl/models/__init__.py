"""Model registry: backbones by name, wrapped with a linear classification head."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ldl.checkpoint import CheckpointError, load_file
from ldl.models.dlib_face import dlib_face
from ldl.models.neck import ActNorm
from ldl.models.resnet import resnet18, resnet50

BACKBONES: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet50": resnet50, "dlib_face": dlib_face}
# Backbones that come with their own weights: built as fn(input_size=, pretrained=) and
# loading `pretrained` themselves (dlib_face: its .dat, by default the installed package's).
SELF_LOADING = {"dlib_face"}
NECKS = ("actnorm", "none")
# model.neck: null takes the arch's own.  dlib's descriptor is a metric embedding: across faces
# each of its 128 values varies by about 0.03 around a mean of about 0.09, so a linear head on it
# starts with logits that hardly differ between images (a probe on the frozen descriptor predicted
# one class for 10 epochs; standardised, it reached 0.60 test accuracy in 3).  The ResNets' maps
# come out of BatchNorm-ReLU blocks already at unit scale.
DEFAULT_NECK = {"dlib_face": "actnorm"}


def register_backbone(name: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn
    return wrap


class FERNet(nn.Module):
    """Backbone (+ optional neck) + global pooling + linear head.  forward() returns a dict so
    that methods can use the pooled features (LDLVA, SCN, RUL, AEA) or the feature map (EAC);
    the neck (ldl.models.neck) standardises the pooled features and the map with them."""

    def __init__(self, backbone: nn.Module, num_classes: int, neck: bool = False):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.out_dim
        self.neck = ActNorm(backbone.out_dim) if neck else nn.Identity()
        self.fc = nn.Linear(backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor, return_map: bool = False) -> dict[str, torch.Tensor]:
        fmap = self.neck(self.backbone(x))
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)
        out = {"features": features, "logits": self.fc(features)}
        if return_map:
            out["feature_map"] = fmap
        return out


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a local torchvision-style (or MS-Celeb) ResNet state dict; the fc layer is ignored."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"model.pretrained: weights file not found: {file} "
                                "(weights are never downloaded; point the config at a local file)")
    state = load_file(file, "model.pretrained weights file")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"model.pretrained: {file} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}" if wrong else "",
        ) if part)
        raise ValueError(f"model.pretrained: {file} does not match the backbone: {detail}")
    backbone.load_state_dict(state)


def build_model(arch: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                pretrained: str | None = None, input_size: int | None = None, neck: str | None = None) -> FERNet:
    if arch not in BACKBONES:
        raise ValueError(f"unknown model.arch '{arch}'; available: {sorted(BACKBONES)}")
    neck = neck or DEFAULT_NECK.get(arch, "none")
    if neck not in NECKS:
        raise ValueError(f"model.neck must be one of {NECKS} (or null: the arch's own), got {neck!r}")
    if arch in SELF_LOADING:  # its own fixed widths and stem: model.width and model.stem do not apply
        return FERNet(BACKBONES[arch](input_size=input_size, pretrained=pretrained), num_classes, neck == "actnorm")
    if input_size is not None:
        raise ValueError(f"model.input_size applies to {sorted(SELF_LOADING)} (which resize their input); "
                         f"{arch} takes data.image_size as it is")
    backbone = BACKBONES[arch](width=width, stem=stem)
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    return FERNet(backbone, num_classes, neck == "actnorm")
