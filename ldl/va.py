"""Pseudo valence-arousal: `ldl va train` fits a VA regressor on a dataset that has VA
(AffectNet, AffectNet+, the synthetic set); `ldl va annotate` writes VA for another dataset
(RAF-DB, SFEW, FERPlus ...) as a CSV `name,valence,arousal` that `data.va_file` reads.

The regressor is the configured backbone with a 2-unit tanh head, trained with the MSE on the
samples whose VA is known (AffectNet's -2 marker is NaN and masked), and reported by RMSE and
the concordance correlation coefficient (CCC) on the validation split.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from ldl.checkpoint import load_file
from ldl.config import config_from_dict
from ldl.data import build_splits
from ldl.data.dataset import BatchLoader
from ldl.engine import autocast
from ldl.train import Job, seed_everything


def concordance(pred: np.ndarray, target: np.ndarray) -> float:
    """Lin's concordance correlation coefficient."""
    mp, mt = pred.mean(), target.mean()
    cov = ((pred - mp) * (target - mt)).mean()
    return float(2 * cov / (pred.var() + target.var() + (mp - mt) ** 2 + 1e-12))


@torch.no_grad()
def predict_va(job: Job, head: nn.Module, loader: BatchLoader) -> np.ndarray:
    job.model.eval(), head.eval()
    out = np.zeros((len(loader.data), 2), dtype=np.float32)
    for batch in loader:
        with autocast(job.device, job.amp):
            feats = job.model(batch["image"])["features"].float()
        out[batch["index"].cpu().numpy()] = torch.tanh(head(feats)).cpu().numpy()
    return out


def _va_metrics(pred: np.ndarray, va: np.ndarray) -> dict:
    known = np.isfinite(va).all(1)
    p, t = pred[known], va[known]
    return {"rmse_valence": float(np.sqrt(((p[:, 0] - t[:, 0]) ** 2).mean())),
            "rmse_arousal": float(np.sqrt(((p[:, 1] - t[:, 1]) ** 2).mean())),
            "ccc_valence": concordance(p[:, 0], t[:, 0]), "ccc_arousal": concordance(p[:, 1], t[:, 1])}


def train_va(cfg: DictConfig, out_dir: Path) -> dict:
    seed_everything(cfg)
    splits = build_splits(cfg, ("train", "val"))
    for split, data in splits.items():
        if data.va is None or not np.isfinite(data.va).any():
            raise ValueError(f"{cfg.data.name} {split} has no valence-arousal: train the regressor on AffectNet, "
                             "AffectNet+ or the synthetic set")
    job = Job(cfg, splits)
    head = nn.Linear(job.model.feature_dim, 2).to(job.device)
    optimizer = torch.optim.Adam(list(job.model.parameters()) + list(head.parameters()), lr=cfg.optim.lr,
                                 weight_decay=cfg.optim.weight_decay)
    history = []
    for epoch in range(cfg.optim.epochs):
        job.model.train(), head.train()
        job.train_loader.set_epoch(epoch)
        for batch in tqdm(job.train_loader, desc=f"va epoch {epoch + 1}", leave=False, disable=not cfg.log.progress):
            known = torch.isfinite(batch["va"]).all(1)
            if not known.any():
                continue
            with autocast(job.device, job.amp):
                feats = job.model(batch["image"])["features"].float()
            loss = ((torch.tanh(head(feats[known])) - batch["va"][known]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        metrics = _va_metrics(predict_va(job, head, job.eval_loader("val")), splits["val"].va)
        history.append({"epoch": epoch + 1, **metrics})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"model": job.model.state_dict(), "head": head.state_dict(),
                "config": OmegaConf.to_container(cfg, resolve=True), "history": history}, out_dir / "va_regressor.pt")
    return history[-1]


def annotate(regressor_dir: Path, target: DictConfig, out_csv: Path) -> int:
    """Write pseudo-VA for every sample of the target dataset's splits; returns the row count."""
    state = load_file(regressor_dir / "va_regressor.pt", "VA regressor", keys=("model", "head", "config"))
    source = config_from_dict(state["config"])
    cfg = OmegaConf.merge(source, {"data": OmegaConf.to_container(target.data, resolve=True)})
    cfg.data.image_size = source.data.image_size   # the regressor sees images as it was trained
    cfg.data.num_classes = target.data.num_classes
    cfg.data.va_file = None
    cfg.data.noise.type = "none"
    splits = build_splits(cfg, ("train", "val", "test"))
    job = Job(cfg, splits)
    # The classifier (sized for the regressor's dataset) is unused; every backbone tensor must load.
    job.model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state["model"].items()
                                        if k.startswith("backbone.")})
    head = nn.Linear(job.model.feature_dim, 2).to(job.device)
    head.load_state_dict(state["head"])
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(out_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "valence", "arousal"])
        for split, data in splits.items():
            pred = predict_va(job, head, job.eval_loader(split))
            for name, (v, a) in zip(data.names, pred):
                writer.writerow([name, f"{v:.5f}", f"{a:.5f}"])
                rows += 1
    return rows
