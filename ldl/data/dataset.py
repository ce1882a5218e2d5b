"""In-memory (or memory-mapped) FER data and the batch loader that feeds the engine.

All images of a split live in one uint8 array [N, H, W, 3]; batches are gathered by index,
so the hot loop has no per-sample Python.  On a GPU the array is moved to GPU memory once
when it fits and batches are gathered there.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Iterator

import numpy as np
import torch

from ldl.data.augment import BatchAugment, normalize
from ldl.lifeline import run_deferred


PER_SAMPLE_DICTS = ("groups", "group_probs")   # FERData fields holding named per-sample arrays


@dataclass
class FERData:
    images: np.ndarray                     # uint8 [N, H, W, 3]
    labels: np.ndarray                     # int64 [N] canonical class index (as trained on)
    num_classes: int
    names: np.ndarray                      # [N] file name / identifier, for error messages and exports
    va: np.ndarray | None = None           # float32 [N, 2] valence, arousal in [-1, 1] (NaN = unknown)
    landmarks: np.ndarray | None = None    # float32 [N, 68, 2] in pixels of `images`
    dist: np.ndarray | None = None         # float32 [N, C] ground-truth / crowd label distribution
    aus: np.ndarray | None = None          # float32 [N, A] action units (synthetic only)
    soft: np.ndarray | None = None         # float32 [N, C] teacher soft labels (AffectNet+ style)
    subset: np.ndarray | None = None       # int64 [N] 0 easy / 1 challenging / 2 difficult
    clean_labels: np.ndarray | None = None  # int64 [N] labels before noise injection
    # Demographic attributes (gender, age, race, skin tone ...): attribute -> str [N] group of each
    # sample, "" where that sample's value is unknown; an attribute no sample has is absent.
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    # attribute -> float32 [N, K] group probabilities where the source gives them (AffectNet+),
    # columns named by info["group_prob_columns"][attribute]; NaN rows where unknown.
    group_probs: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # skipped-input counts, ceilings, noise report ...

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, index: np.ndarray) -> "FERData":
        """Rows `index` of every per-sample array (images stay a memory-map view when possible)."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and f.name != "images":
                changes[f.name] = value[index]
            elif f.name in PER_SAMPLE_DICTS:
                changes[f.name] = {key: column[index] for key, column in value.items()}
        changes["images"] = self.images[index]
        return replace(self, **changes, info=dict(self.info))

    @property
    def is_noisy(self) -> np.ndarray | None:
        return None if self.clean_labels is None else self.labels != self.clean_labels


def gather_rows(images: np.ndarray, index: torch.Tensor) -> torch.Tensor:
    """images[index] as a tensor; reads a memory map in sorted order (much faster), then
    restores the requested order."""
    order = torch.argsort(index)
    rows = torch.from_numpy(np.asarray(images[index[order].numpy()]))
    return rows[torch.argsort(order)]


def _fits_on_gpu(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Keep the uint8 images in GPU memory only if they take at most `share` of what is free."""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def _to_tensor(array: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    if array is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


class BatchLoader:
    """Shuffled (train) or ordered (eval) batches as dicts of tensors on `device`.

    Keys: image (float, normalised, NCHW), label, index, and when present clean_label, dist,
    va, soft, subset, landmarks.  With `flip_view` (EAC) a training batch also holds
    image_flipped: the mirror of each image before erasing, erased independently.  Each epoch's order and augmentation come from a generator
    seeded by (seed, epoch), so a resumed run replays exactly the batches it would have seen.
    """

    def __init__(self, data: FERData, batch_size: int, device: torch.device, train: bool,
                 seed: int = 0, augment: BatchAugment | None = None, gpu_resident: bool = True,
                 drop_last: bool | None = None, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, flip_view: bool = False) -> None:
        self.data, self.batch_size, self.device, self.train = data, batch_size, device, train
        self.seed, self.augment, self.channels_last = seed, augment, channels_last
        self.flip_view = flip_view
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        on_gpu = device.type == "cuda" and gpu_resident and _fits_on_gpu(data.images.nbytes, device)
        self.images = torch.from_numpy(np.asarray(data.images)).to(device) if on_gpu else data.images
        self.fields = {
            "label": _to_tensor(data.labels, device), "clean_label": _to_tensor(data.clean_labels, device),
            "dist": _to_tensor(data.dist, device), "va": _to_tensor(data.va, device),
            "soft": _to_tensor(data.soft, device), "subset": _to_tensor(data.subset, device),
            "landmarks": _to_tensor(data.landmarks, device),
        }
        self.fields = {k: v for k, v in self.fields.items() if v is not None}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_rank(self) -> int:
        """Samples each rank sees: equal shares, padded by repeats (eval) or truncated (train),
        as torch's DistributedSampler does."""
        n = len(self.data)
        return n // self.world_size if self.drop_last else -(-n // self.world_size)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.data)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        if self.world_size > 1:  # every rank takes an interleaved, disjoint share
            total = self._per_rank() * self.world_size
            order = torch.cat([order, order[: total - n]])[:total]
            order = order[self.rank::self.world_size]
        return order

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _gather_images(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[index.to(self.images.device)]
        return gather_rows(self.images, index).to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self._order(generator)
        for b in range(len(self)):
            run_deferred()   # between batches: where a deferred signal (a SLURM requeue) may end the run
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            images = self._gather_images(index).permute(0, 3, 1, 2)  # NHWC uint8 -> NCHW
            images = images.float().div_(255)
            views = {"image": images}
            if self.train and self.augment is not None:
                images = self.augment.geometric(images, generator)
                views["image"] = self.augment.erase(images, generator)
                if self.flip_view:
                    views["image_flipped"] = self.augment.erase(images.flip(-1), generator)
            dev_index = index.to(self.device)
            batch = {"index": dev_index}
            for key, view in views.items():
                view = normalize(view)
                batch[key] = view.contiguous(memory_format=torch.channels_last) if self.channels_last else view
            batch.update({k: v[dev_index] for k, v in self.fields.items()})
            yield batch
