"""EAC, Erasing Attention Consistency (Zhang et al., ECCV 2022; public code
zyh-uaiaaaa/Erasing-Attention-Consistency).

The batch arrives already randomly erased (data.augment.erase_p; the public code uses torchvision
RandomErasing(scale=(0.02, 0.25)) at its default p = 0.5).  The horizontal flip is forwarded too:
with `independent_erasing` (the public code's noisy-label path, `dataset.py`: the raw image is
flipped and then transformed, so its erased rectangle is drawn anew) the loader's
`image_flipped`; without it (the clean-label path) the mirror of the erased image.  Class
activation maps CAM_c = sum_d W_cd F_d (F the last feature map, W the classifier)
of the image and of the flipped image, flipped back, must agree (W enters detached, as in the
public code's `fc.weight.data`: the consistency term trains the features, never the classifier,
which it would otherwise shrink toward zero):
  loss = CE(logits(x), y) + lambda * MSE(CAM(x), flip(CAM(flip(x))))        (lambda = 5)
Flipping the map back is exact (the public code's grid_sample on grid points with
align_corners=True is the same permutation).  EAC has no per-sample uncertainty; its noise
score is the model's small-loss score, like CE's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ldl.methods.base import Method, StepOutput, register_method, unwrap


def class_activation_maps(feature_map: torch.Tensor, classifier_weight: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] x [C, D] -> [B, C, H, W]."""
    return torch.einsum("bdhw,cd->bchw", feature_map, classifier_weight)


def attention_consistency(cam: torch.Tensor, cam_of_flipped: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(cam, cam_of_flipped.flip(-1))


@register_method("eac")
class EAC(Method):
    # src/main.py: Adam(lr=1e-4, weight_decay=1e-4), batch 32, 60 epochs, ExponentialLR(0.9) per
    # epoch; lr 2e-4 for ResNet-18 (the maintainer, issues #3 and #19; 1e-4 is the ResNet-50 code's).
    # dataset.py: no random flip or crop of the image, RandomErasing p = 0.5 (and Gaussian noise
    # at p = 0.5 on the image only, which is not modelled here).
    PAPER_RECIPE = {
        "optim": {"name": "adam", "lr": 2e-4, "weight_decay": 1e-4, "batch_size": 32, "warmup_epochs": 0,
                  "schedule": "exponential", "exp_gamma": 0.9, "exp_epochs": 60},
        "data": {"augment": {"flip": False, "pad_crop": 0, "erase_p": 0.5}},
        "method": {"eac": {"lam": 5.0, "independent_erasing": True}},
    }

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.flip_view = cfg.independent_erasing

    def training_step(self, model, batch, epoch):
        images = batch["image"]
        flipped = batch["image_flipped"] if "image_flipped" in batch else images.flip(-1)
        both = model(torch.cat([images, flipped]), return_map=True)
        logits, flipped_logits = both["logits"].float().chunk(2)
        weight = unwrap(model).fc.weight.detach().float()
        cam, cam_flipped = class_activation_maps(both["feature_map"].float(), weight).chunk(2)
        ce = F.cross_entropy(logits, batch["label"])
        consistency = attention_consistency(cam, cam_flipped)
        return StepOutput(ce + self.cfg.lam * consistency, logits,
                          {"ce": ce.detach(), "consistency": consistency.detach()})
