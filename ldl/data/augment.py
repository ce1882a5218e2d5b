"""Batched augmentation on tensors (CPU or GPU): flip, pad-and-crop, random erasing.

These are the augmentations the SCN / RUL / EAC / SLM-AEA code bases apply per image with
torchvision transforms, done here for a whole batch at once.  Random parameters are drawn
on the CPU from the loader's seeded generator, so CPU and GPU runs see the same crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class BatchAugment:
    flip: bool = True
    pad_crop: int = 4                 # pixels of reflect padding before a random crop (0 = off)
    erase_p: float = 0.0              # probability of erasing one rectangle per image
    erase_scale: tuple[float, float] = (0.02, 0.25)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.erase(self.geometric(images, generator), generator)

    def geometric(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Flip and pad-crop."""
        n, _, h, w = images.shape
        dev = images.device
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.pad_crop > 0:
            p = self.pad_crop
            padded = torch.nn.functional.pad(images, (p, p, p, p), mode="reflect")
            oy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(dev)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(dev)
            rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]
            batch = torch.arange(n, device=dev)[:, None, None, None]
            chans = torch.arange(images.shape[1], device=dev)[None, :, None, None]
            images = padded[batch, chans, rows, cols]
        return images

    def erase(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random erasing of one rectangle per image with probability erase_p."""
        if self.erase_p <= 0:
            return images
        n, _, h, w = images.shape
        area = h * w * torch.empty(n).uniform_(*self.erase_scale, generator=generator)
        log_r = torch.empty(n).uniform_(*torch.tensor(self.erase_ratio).log().tolist(), generator=generator)
        ratio = log_r.exp()
        eh = (area * ratio).sqrt().round().clamp(1, h).long()
        ew = (area / ratio).sqrt().round().clamp(1, w).long()
        y0 = (torch.rand(n, generator=generator) * (h - eh + 1)).long()
        x0 = (torch.rand(n, generator=generator) * (w - ew + 1)).long()
        apply = torch.rand(n, generator=generator) < self.erase_p
        dev = images.device
        ys, xs = torch.arange(h), torch.arange(w)
        inside = ((ys[None, :, None] >= y0[:, None, None]) & (ys[None, :, None] < (y0 + eh)[:, None, None])
                  & (xs[None, None, :] >= x0[:, None, None]) & (xs[None, None, :] < (x0 + ew)[:, None, None])
                  & apply[:, None, None])
        # Erase to the dataset mean (0 after normalisation), as torchvision's default value=0 does
        # when RandomErasing follows Normalize.
        mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
        return torch.where(inside.to(dev)[:, None], mean, images)
