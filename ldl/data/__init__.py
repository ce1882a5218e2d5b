"""Datasets: one module per dataset, all mapping into the canonical label space.

`build_splits(cfg)` returns {"train", "val", "test"} FERData for the configured dataset, read
through the packed cache, with the training split sub-sampled to a group mix and noise injected
into it when asked (in that order: the noise rates hold on the training set as used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from omegaconf import DictConfig
from tqdm.auto import tqdm

from ldl.data.cache import load_or_build
from ldl.data.dataset import BatchLoader, FERData
from ldl.data.groups import sample_group_mix
from ldl.data.noise import apply_noise
from ldl.data.synthetic import SyntheticSpec, generate_split, task_ceiling

SplitBuilder = Callable[[DictConfig, str], FERData]
DATASETS: dict[str, SplitBuilder] = {}


def register_dataset(name: str) -> Callable[[SplitBuilder], SplitBuilder]:
    def wrap(fn: SplitBuilder) -> SplitBuilder:
        DATASETS[name] = fn
        return fn
    return wrap


def _cache_dir(cfg: DictConfig) -> Path | None:
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else None


@register_dataset("synthetic")
def synthetic_split(cfg: DictConfig, split: str) -> FERData:
    s = cfg.data.synthetic
    spec = SyntheticSpec(num_classes=cfg.data.num_classes, image_size=cfg.data.image_size, seed=s.seed)
    n = {"train": s.num_train, "val": s.num_val, "test": s.num_test}[split]
    groups = {name: list(proportions) for name, proportions in s.groups.items() if proportions}
    key = {"dataset": "synthetic", "split": split, "n": n, "spec": spec.__dict__, "version": 1}
    if groups:  # only then: a world without groups keeps its cache entries
        key["groups"] = groups

    def build(alloc) -> FERData:
        with tqdm(total=n, desc=f"render synthetic {split}", unit="img", disable=not cfg.log.progress) as bar:
            data = generate_split(spec, split, n, progress=bar, groups=groups)
        data.info["ceiling"] = task_ceiling(data.dist)
        return data

    return load_or_build(key, build, _cache_dir(cfg))


def build_splits(cfg: DictConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, FERData]:
    name = cfg.data.name
    if name not in DATASETS:
        _import_real_loaders()
    if name not in DATASETS:
        raise ValueError(f"unknown data.name '{name}'; available: {sorted(DATASETS)}")
    out = {split: DATASETS[name](cfg, split) for split in splits}
    for split, data in out.items():
        if len(data) == 0:
            hint = f" (it is held out of train: raise data.val_fraction={cfg.data.val_fraction})" if split == "val" else ""
            raise ValueError(f"{name}: the {split} split is empty{hint}")
    if cfg.data.va_file:  # pseudo-VA for datasets without human VA (`ldl va annotate`)
        from ldl.data.loading import read_va_file
        out = {split: read_va_file(Path(cfg.data.va_file).expanduser(), data) for split, data in out.items()}
    mix = cfg.data.group_mix
    if "train" in out and mix.attribute:
        out["train"] = sample_group_mix(out["train"], mix.attribute, list(mix.groups), list(mix.proportions),
                                        mix.size, mix.seed)
    if "train" in out and (cfg.data.noise.type != "none" or cfg.data.noise.group_attribute):
        out["train"] = apply_noise(out["train"], cfg.data.noise, name)
    return out


def _import_real_loaders() -> None:
    """Real-format loaders register themselves on import (kept lazy: PIL and csv parsing are
    not needed for the synthetic set)."""
    from ldl.data import affectnet, affectnet_plus, ferplus, manifest, rafdb, sfew  # noqa: F401


__all__ = ["BatchLoader", "FERData", "build_splits", "register_dataset", "DATASETS"]
