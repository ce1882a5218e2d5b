"""The AffectNet+-style soft-label generator (DESIGN.md section 1.3; rules in fusion.py).

`train_teacher`: one-vs-rest classifiers on each configured backbone (ordinary runs of the
`ovr` method), Platt-calibrated on the validation split; the AU-proxy head on landmarks,
temperature-calibrated on the validation split.  `label_dataset`: soft labels, subsets and
metadata for every split, written in the AffectNet+ per-image JSON layout that
`data.name=affectnet_plus` reads back.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from ldl import checkpoint
from ldl.config import config_from_dict
from ldl.data import FERData, build_splits
from ldl.data.affectnet_plus import SPLIT_FOLDERS, write_record
from ldl.data.noise import write_noise_file
from ldl.engine import predict_logits
from ldl.teacher.au_proxy import AUProxyHead, landmark_features, train_au_head
from ldl.teacher.fusion import apply_platt, assign_subsets, fit_platt, fit_temperature, fuse, softmax
from ldl.train import job_from_checkpoint, run_training

NOISE_FILE = "noise.csv"


def _member_logits(checkpoint_path: Path, data: FERData, split: str) -> np.ndarray:
    state = checkpoint.load(checkpoint_path)
    job = job_from_checkpoint(state, config_from_dict(state["config"]), {split: data})
    logits, index = predict_logits(job.net, job.method, job.eval_loader(split), job.device, job.amp)
    return logits[np.argsort(index)]


def _landmark_features(data: FERData, split: str) -> np.ndarray:
    return landmark_features(data.landmarks, f"the AU-proxy head (the {split} split)")


def train_teacher(cfg: DictConfig, out_dir: Path) -> dict:
    """Train, calibrate and save the teacher; returns its held-out report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t = cfg.teacher
    if len(t.backbones) < 2:
        raise ValueError("teacher.backbones: the ensemble needs at least two backbones")
    splits = build_splits(cfg, ("train", "val"))
    members = []
    for arch in t.backbones:
        run_dir = out_dir / f"ebc-{arch}"
        if not (run_dir / "summary.json").is_file():
            member_cfg = OmegaConf.merge(cfg, {"method": {"name": "ovr"}, "model": {"arch": arch},
                                               "run": {"dir": str(run_dir)}})
            run_training(member_cfg)
        val_logits = _member_logits(run_dir / "checkpoint.pt", splits["val"], "val")
        members.append({"arch": arch, "checkpoint": str(run_dir / "checkpoint.pt"),
                        "platt": fit_platt(val_logits, splits["val"].labels).tolist()})
    head = train_au_head(_landmark_features(splits["train"], "train"), splits["train"].labels,
                         cfg.data.num_classes, t.au_epochs, cfg.seed)
    with torch.no_grad():
        val_au_logits = head(torch.from_numpy(_landmark_features(splits["val"], "val"))).numpy()
    temperature = fit_temperature(val_au_logits, splits["val"].labels)
    teacher = {"members": members, "au_head": head.state_dict(), "au_temperature": temperature,
               "config": OmegaConf.to_container(cfg, resolve=True)}
    torch.save(teacher, out_dir / "teacher.pt")
    soft, _ = soft_labels(teacher, splits["val"], "val")
    val = splits["val"]
    report = {"val_accuracy_of_soft_argmax": float((soft.argmax(1) == val.labels).mean()),
              "au_temperature": temperature}
    (out_dir / "teacher_report.json").write_text(json.dumps(report, indent=1))
    return report


def soft_labels(teacher: dict, data: FERData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fused soft labels [N, C] and subsets [N] of a split."""
    t = teacher["config"]["teacher"]
    ovr = [apply_platt(_member_logits(Path(m["checkpoint"]), data, split), np.array(m["platt"]))
           for m in teacher["members"]]
    head = AUProxyHead(data.num_classes)
    head.load_state_dict(teacher["au_head"])
    with torch.no_grad():
        au_logits = head(torch.from_numpy(_landmark_features(data, split))).numpy()
    au = softmax(au_logits / teacher["au_temperature"])
    soft = fuse(ovr, au, t["w_ebc"], t["w_au"])
    return soft, assign_subsets(soft, data.labels, t["easy_min"], t["difficult_max"])


def label_dataset(teacher_dir: Path, out_root: Path, cfg: DictConfig | None = None) -> dict:
    """Write train+val into train_set/ and test into validation_set/, AffectNet+ layout.

    The records carry the clean labels.  When the teacher learnt from injected noise, the labels
    it learnt from go to `<out_root>/noise.csv` (read back with data.noise.type=file), so that a
    student of the copy trains on the very labels the teacher saw and its report knows which of
    them are wrong."""
    teacher = checkpoint.load_file(teacher_dir / "teacher.pt", "teacher",
                                   keys=("members", "au_head", "au_temperature", "config"))
    cfg = cfg or config_from_dict(teacher["config"])
    splits = build_splits(cfg, ("train", "val", "test"))
    counts = {}
    pool: list[tuple[str, int, int]] = []   # (name in the copy, label learnt from, clean label) of train_set/
    for split, data in splits.items():
        folder = out_root / "human_annotated" / SPLIT_FOLDERS["test" if split == "test" else "train"]
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        soft, subset = soft_labels(teacher, data, split)
        soft8 = np.zeros((len(data), 8), dtype=np.float64)
        soft8[:, : soft.shape[1]] = soft
        dist8 = None if data.dist is None else np.pad(data.dist, ((0, 0), (0, 8 - data.dist.shape[1])))
        size = data.images.shape[1]
        clean = data.labels if data.clean_labels is None else data.clean_labels
        for i in tqdm(range(len(data)), desc=f"write {split}", unit="img", disable=not cfg.log.progress):
            stem = f"{split}_{i:06d}"
            Image.fromarray(np.asarray(data.images[i])).save(folder / "images" / f"{stem}.jpg", quality=95)
            meta = {}
            if data.va is not None:
                meta["valence"], meta["arousal"] = (float(v) if np.isfinite(v) else -2 for v in data.va[i])
            if data.landmarks is not None:
                # AffectNet+ landmarks are in 224x224 crop pixels; the reader rescales them.
                meta["landmark-68"] = (data.landmarks[i] * 224 / size).reshape(-1).round(2).tolist()
            if dist8 is not None:   # the truth travels with the labels (affectnet_plus reads it as dist)
                meta["label-distribution"] = [round(float(p), 6) for p in dist8[i]]
            write_record(folder / "annotations" / f"{stem}.json", int(clean[i]), soft8[i], int(subset[i]), meta)
            if split != "test":   # the copy's training pool
                pool.append((stem, data.labels[i], clean[i]))
        counts[split] = {"n": len(data), "subsets": np.bincount(subset, minlength=3).tolist()}
    if splits["train"].clean_labels is not None:
        names, labels, clean_labels = zip(*pool)
        write_noise_file(out_root / NOISE_FILE, names, labels, clean_labels, splits["train"].info["noise"])
        counts["noise_file"] = str(out_root / NOISE_FILE)
    return counts
