"""Cache build time and size, and loader + augmentation throughput against the model step it
feeds, measured in one run.  Writes benchmarks/results/data_pipeline-<machine>.json.

Usage: python benchmarks/data_pipeline.py [--synthetic 100000] [--rafdb 12271] [--batch 128]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.augment import BatchAugment
from ldl.data.dataset import BatchLoader
from ldl.models import build_model
from ldl.tracking import machine


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write_rafdb_like(root: Path, n_train: int, n_test: int) -> None:
    rng = np.random.default_rng(0)
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    names = [f"train_{i + 1:05d}.jpg" for i in range(n_train)] + [f"test_{i + 1:04d}.jpg" for i in range(n_test)]
    labels = rng.integers(1, 8, len(names))
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(f"{n} {l}" for n, l in zip(names, labels)))
    base = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    for i, n in enumerate(names):
        img = np.roll(base, i % 100, axis=1)
        Image.fromarray(img).save(root / "Image" / "aligned" / f"{n[:-4]}_aligned.jpg", quality=90)


def loader_vs_step(data, batch: int, arch: str, width: int, stem: str, steps: int = 30) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = BatchLoader(data, batch, device, train=True, augment=BatchAugment(erase_p=0.5))
    start, n = time.perf_counter(), 0
    for n, b in enumerate(loader, start=1):
        if n >= steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    loader_s = (time.perf_counter() - start) / n
    model = build_model(arch, 8, width, stem).to(device)
    opt = torch.optim.Adam(model.parameters())
    x, y = b["image"], b["label"]
    for i in range(steps + 3):
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    return {"batch": batch, "image_size": int(x.shape[-1]), "model": f"{arch} width {width} stem {stem}",
            "loader_batches_per_s": 1 / loader_s, "model_steps_per_s": 1 / step_s,
            "loader_time_over_step_time": loader_s / step_s}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--rafdb", type=int, default=12_271)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LDL_CACHE"] = str(Path(tmp) / "cache")
        cfg = load_config(None, [f"data.synthetic.num_train={args.synthetic}", "log.progress=true"])
        start = time.perf_counter()
        train = build_splits(cfg, ("train",))["train"]
        results["synthetic_cache"] = {"images": args.synthetic, "image_size": 48, "build_s": time.perf_counter() - start,
                                      "bytes": folder_size(Path(tmp) / "cache")}
        start = time.perf_counter()
        build_splits(cfg, ("train",))
        results["synthetic_cache"]["reload_s"] = time.perf_counter() - start
        results["synthetic_loader"] = loader_vs_step(train, args.batch, "resnet18", 32, "small")

        raf = Path(tmp) / "raf-basic"
        start = time.perf_counter()
        write_rafdb_like(raf, args.rafdb, 3068)
        results["rafdb_like_jpeg_write_s"] = time.perf_counter() - start
        before = folder_size(Path(tmp) / "cache")
        cfg = load_config(None, ["data.name=rafdb", f"data.root={raf}", "data.num_classes=7", "data.image_size=100",
                                 "data.val_fraction=0"])
        start = time.perf_counter()
        raf_train = build_splits(cfg, ("train",))["train"]
        results["rafdb_cache"] = {"images": len(raf_train), "source": "100x100 JPEG", "image_size": 100,
                                  "build_s": time.perf_counter() - start,
                                  "bytes": folder_size(Path(tmp) / "cache") - before}
        results["rafdb_loader"] = loader_vs_step(raf_train, args.batch, "resnet18", 64, "imagenet", steps=10)
    out = Path(__file__).parent / "results" / f"data_pipeline-{socket.gethostname()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
