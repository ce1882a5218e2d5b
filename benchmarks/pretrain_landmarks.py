"""A pretrained backbone for the synthetic studies, without expression labels.

The papers fine-tune from face-recognition (MS-Celeb) or ImageNet weights, so their methods'
early predictions, neighbours and attention mean something from the first step; from random
weights several of them collapse (see reports/noisy_synthetic).  No such weights can be
downloaded here, so the stand-in is face *alignment*: the backbone learns to regress the 68
landmarks of synthetic faces drawn with another seed (disjoint samples), and never sees an
expression label.  `experiments/sweeps/noisy_synthetic_pretrained.yaml` fine-tunes from it.

Usage: python benchmarks/pretrain_landmarks.py [--out sweeps/landmark_backbone.pth]
Writes the backbone's state dict and benchmarks/results/pretrain_landmarks-<host>.json.
"""
from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.dataset import BatchLoader
from ldl.models import build_model
from ldl.tracking import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="experiments/synthetic/study.yaml", help="the studies' model and image size")
    parser.add_argument("--out", default="sweeps/landmark_backbone.pth")
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    study = load_config(args.config, [])
    side = study.data.image_size
    cfg = load_config(None, [f"data.image_size={side}", "data.synthetic.seed=1",
                             f"data.synthetic.num_train={args.images}", "data.synthetic.num_val=500"])
    splits = build_splits(cfg, ("train", "val"))
    model = build_model(study.model.arch, 68 * 2, study.model.width, study.model.stem)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cpu = torch.device("cpu")
    loader = BatchLoader(splits["train"], 128, cpu, train=True, seed=0)  # no flip: it would swap landmarks

    def loss_of(batch: dict) -> torch.Tensor:
        target = (batch["landmarks"] / side - 0.5).flatten(1)
        return F.mse_loss(model(batch["image"])["logits"], target)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        model.train()
        for batch in tqdm(loader, desc=f"landmarks {epoch + 1}/{args.epochs}", leave=False):
            optimizer.zero_grad(set_to_none=True)
            loss_of(batch).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        val_mse = np.mean([loss_of(b).item() for b in BatchLoader(splits["val"], 250, cpu, train=False)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.backbone.state_dict(), out)
    result = {"machine": machine(), "weights": str(out), "images": args.images, "epochs": args.epochs,
              "image_size": side, "arch": study.model.arch, "width": study.model.width,
              "val_landmark_rmse_px": float(np.sqrt(val_mse)) * side, "seconds": time.perf_counter() - start}
    path = Path("benchmarks/results") / f"pretrain_landmarks-{socket.gethostname()}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"landmark RMSE on val {result['val_landmark_rmse_px']:.2f} px at {side} px; weights in {out}")


if __name__ == "__main__":
    main()
