"""EAC, Erasing Attention Consistency (Zhang et al., ECCV 2022; public code
zyh-uaiaaaa/Erasing-Attention-Consistency).

The batch arrives already randomly erased (set data.augment.erase_p; the public code uses
torchvision RandomErasing(scale=(0.02, 0.25)) on every image).  Its horizontal flip is forwarded
too; class activation maps CAM_c = sum_d W_cd F_d (F the last feature map, W the classifier)
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
    def training_step(self, model, batch, epoch):
        images = batch["image"]
        both = model(torch.cat([images, images.flip(-1)]), return_map=True)
        logits, flipped_logits = both["logits"].float().chunk(2)
        weight = unwrap(model).fc.weight.detach().float()
        cam, cam_flipped = class_activation_maps(both["feature_map"].float(), weight).chunk(2)
        ce = F.cross_entropy(logits, batch["label"])
        consistency = attention_consistency(cam, cam_flipped)
        return StepOutput(ce + self.cfg.lam * consistency, logits,
                          {"ce": ce.detach(), "consistency": consistency.detach()})
