"""`ldl bench`: speed and memory figures, measured in one run and reported as ratios.

Sections (all by default):
  train   per method: our training loop (train_one_epoch, data already in memory / on the GPU)
          against the raw model step (forward, backward, optimiser step on one fixed batch) of
          the same model, batch and precision: images/s and the ratio loop / raw;
          and each method's epoch time relative to CE.
  eval    evaluation throughput (images/s).
  knn     exact k = 8 neighbour search time per backend as N grows, 2-d and 512-d; a backend is
          skipped at a size where its quadratic extrapolation exceeds the budget.
  cache   packed-cache build time and size: the synthetic set, and a RAF-DB-layout set of
          100x100 JPEGs written for the purpose.
  loader  loader + augmentation batches/s against the model steps/s it feeds.
  backbone  the backbones at one input size (150 px, dlib's native, on a GPU; 112 px on CPU):
          ResNet-18 (width 64, ImageNet stem) and dlib's face-recognition ResNet (model.arch=
          dlib_face): CE through our loop against the raw step of the same model, images/s.
  run     wall time of one whole `ldl train` (JPEG decode and cache build, training, evaluation
          every epoch, checkpoints) of CE on a RAF-DB-sized set of JPEGs in RAF-DB's layout:
          60 epochs at the profile's size on a GPU; `--run-epochs` sets them (default 2 on CPU).
Peak memory (GPU allocator, or the process's max RSS on CPU) is recorded per section.
Results go to <out>/bench-<host>-<cpu|gpu>.json with the machine named; a run of some sections
replaces those sections in an existing file and keeps the others (each section carries its time).
Nothing here is asserted by tests.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.augment import BatchAugment
from ldl.data.dataset import BatchLoader
from ldl.data.rafdb import write_rafdb
from ldl.engine import autocast, evaluate, train_one_epoch
from ldl.models import build_model
from ldl.neighbors import KDTREE_MAX_DIM, available_backends, knn
from ldl.tracking import machine
from ldl.train import Job, run_training

METHODS = ("ce", "label_smoothing", "ldlva", "ldlva:faithful", "slm_aea", "scn", "rul", "eac")
SECTIONS = ("train", "eval", "knn", "cache", "loader", "run", "backbone")  # eval is measured with each method in `train`
BACKBONES = ("resnet18", "dlib_face")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile(gpu: bool) -> dict:
    """Sizes for a CPU run (small network, 48 px) and for a GPU run (ResNet-18 at 112 px)."""
    if gpu:
        return {"image_size": 112, "width": 64, "stem": "imagenet", "batch": 256, "steps": 40,
                "knn_sizes": [12271, 50000, 100000, 287651], "run_epochs": 60,
                "backbone": {"image_size": 150, "batch": 256, "steps": 40}}
    return {"image_size": 48, "width": 16, "stem": "small", "batch": 128, "steps": 12,
            "knn_sizes": [12271, 50000], "run_epochs": 2, "backbone": {"image_size": 112, "batch": 32, "steps": 6}}


def _model_overrides(p: dict) -> list[str]:
    arch = p.get("arch", "resnet18")
    size = [f"model.input_size={p['image_size']}"] if arch == "dlib_face" else []   # no resize inside
    return [f"model.arch={arch}", f"model.width={p['width']}", f"model.stem={p['stem']}", *size]


def _cfg(p: dict, method: str, extra: list[str] = ()):
    name, _, mode = method.partition(":")
    overrides = [f"data.image_size={p['image_size']}", *_model_overrides(p), f"optim.batch_size={p['batch']}",
                 f"data.synthetic.num_train={p['batch'] * p['steps']}",
                 "data.synthetic.num_val=512", f"data.synthetic.num_test={2 * p['batch']}", f"method.name={name}",
                 "log.progress=false", "log.wandb=disabled", "optim.warmup_epochs=0", *extra]
    if mode:
        overrides.append(f"method.ldlva.mode={mode}")
    return load_config(None, overrides)


def raw_step_images_per_s(p: dict, device: torch.device, channels_last: bool, steps: int) -> float:
    arch = p.get("arch", "resnet18")
    model = build_model(arch, 8, p["width"], p["stem"],
                        input_size=p["image_size"] if arch == "dlib_face" else None).to(device)
    x = torch.randn(p["batch"], 3, p["image_size"], p["image_size"], device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (p["batch"],), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(steps + 3):
        if i == 3:
            _sync()
            start = time.perf_counter()
        with autocast(device, device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x)["logits"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync()
    return steps * p["batch"] / (time.perf_counter() - start)


def bench_train(p: dict, methods: tuple[str, ...]) -> dict:
    out = {}
    for method in methods:
        cfg = _cfg(p, method, ["optim.epochs=2"])
        splits = build_splits(cfg, ("train", "test"))
        job = Job(cfg, splits)
        job.method.on_train_start(job.net, splits["train"])
        common = (job.net, job.method, job.train_loader, job.optimizer, job.scheduler)
        train_one_epoch(*common, 0, job.device, job.amp, progress=False)          # warm-up epoch
        _sync()
        stats = train_one_epoch(*common, 1, job.device, job.amp, progress=False)
        raw = raw_step_images_per_s(p, job.device, job.channels_last, p["steps"])
        eval_start = time.perf_counter()
        evaluate(job.net, job.method, job.eval_loader("test"), job.device, job.amp)
        _sync()
        out[method] = {"loop_images_per_s": stats["train_images_per_s"], "raw_step_images_per_s": raw,
                       "loop_over_raw": stats["train_images_per_s"] / raw, "epoch_time_s": stats["epoch_time"],
                       "eval_images_per_s": len(splits["test"]) / (time.perf_counter() - eval_start)}
        print(method, {k: round(v, 3) for k, v in out[method].items()}, flush=True)
    if "ce" in out:
        for method in out:
            out[method]["epoch_time_over_ce"] = out[method]["epoch_time_s"] / out["ce"]["epoch_time_s"]
    return out


def bench_backbones(p: dict) -> dict:
    """CE on each backbone at one input size: our loop and the raw step, and each against ResNet-18."""
    out = {}
    for arch in BACKBONES:
        q = {**p, **p["backbone"], "arch": arch, "width": 64, "stem": "imagenet"}
        out[arch] = bench_train(q, ("ce",))["ce"]
        out[arch].update(image_size=q["image_size"], batch=q["batch"])
        for key in ("loop_images_per_s", "raw_step_images_per_s"):
            out[arch][f"{key}_over_resnet18"] = out[arch][key] / out["resnet18"][key]
        print(arch, {k: round(v, 3) for k, v in out[arch].items()}, flush=True)
    return out


def bench_knn(sizes: list[int], dims: tuple[int, ...] = (2, 512), budget_s: float = 300) -> list[dict]:
    rng = np.random.default_rng(0)
    rows, last = [], {}
    for dim in dims:
        for n in sizes:
            points = rng.uniform(-1, 1, (n, dim)).astype(np.float32)
            for backend in available_backends():
                if backend == "kdtree" and dim > KDTREE_MAX_DIM:
                    continue
                if (backend, dim) in last:
                    prev_n, prev_s = last[backend, dim]
                    predicted = prev_s * (n / prev_n) ** 2
                    if predicted > budget_s:
                        rows.append({"backend": backend, "n": n, "dim": dim, "seconds": None,
                                     "skipped": f"predicted {predicted:.0f} s > budget {budget_s:.0f} s"})
                        print(rows[-1], flush=True)
                        continue
                start = time.perf_counter()
                knn(points, 8, backend)
                _sync()
                seconds = time.perf_counter() - start
                rows.append({"backend": backend, "n": n, "dim": dim, "seconds": seconds})
                print(rows[-1], flush=True)
                last[backend, dim] = (n, seconds)
    return rows


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _write_rafdb_like(root: Path, n_train: int, n_test: int) -> None:
    """Random 100x100 JPEGs in RAF-DB's layout (only their decoding cost matters here)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    write_rafdb(root, {split: ((np.roll(base, i % 100, axis=1) for i in range(n)), rng.integers(0, 7, n))
                       for split, n in (("train", n_train), ("test", n_test))})


@contextlib.contextmanager
def _cache_in(folder: Path):
    """Point the data cache at `folder` (a fresh, empty cache: build times are measured)."""
    previous = os.environ.get("LDL_CACHE")
    os.environ["LDL_CACHE"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LDL_CACHE", None)
        else:
            os.environ["LDL_CACHE"] = previous


def bench_cache_and_loader(p: dict, synthetic_n: int, rafdb_n: int) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, _cache_in(Path(tmp) / "cache"):
        cfg = load_config(None, [f"data.synthetic.num_train={synthetic_n}", f"data.image_size={p['image_size']}"])
        start = time.perf_counter()
        train = build_splits(cfg, ("train",))["train"]
        out["synthetic_cache"] = {"images": synthetic_n, "image_size": p["image_size"],
                                  "build_s": time.perf_counter() - start, "bytes": _folder_bytes(Path(tmp) / "cache")}
        start = time.perf_counter()
        build_splits(cfg, ("train",))
        out["synthetic_cache"]["reload_s"] = time.perf_counter() - start
        out["synthetic_loader"] = loader_vs_step(train, p)
        raf = Path(tmp) / "raf-basic"
        start = time.perf_counter()
        _write_rafdb_like(raf, rafdb_n, 3068)
        out["rafdb_like_jpeg_write_s"] = time.perf_counter() - start
        before = _folder_bytes(Path(tmp) / "cache")
        cfg = load_config(None, ["data.name=rafdb", f"data.root={raf}", "data.num_classes=7",
                                 "data.image_size=100", "data.val_fraction=0"])
        start = time.perf_counter()
        raf_train = build_splits(cfg, ("train",))["train"]
        out["rafdb_cache"] = {"images": len(raf_train), "source": "100x100 JPEG", "image_size": 100,
                              "build_s": time.perf_counter() - start,
                              "bytes": _folder_bytes(Path(tmp) / "cache") - before}
    return out


def bench_run(p: dict, rafdb_n: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp, _cache_in(Path(tmp) / "cache"):
        raf, run_dir = Path(tmp) / "raf-basic", Path(tmp) / "run"
        test_n = round(rafdb_n * 3068 / 12271)  # RAF-DB basic's train / test proportion
        _write_rafdb_like(raf, rafdb_n, test_n)
        cfg = _cfg(p, "ce", ["data.name=rafdb", f"data.root={raf}", "data.num_classes=7", "data.val_fraction=0",
                             "eval.splits=[test]", f"optim.epochs={epochs}", f"run.dir={run_dir}"])
        start = time.perf_counter()
        run_training(cfg)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs_run = [r for r in records if "epoch_time" in r]
    train_s = sum(r["epoch_time"] for r in epochs_run)
    out = {"train_images": rafdb_n, "test_images": test_n, "epochs": epochs, "wall_s": wall, "train_s": train_s,
           "mean_epoch_s": train_s / len(epochs_run),
           "train_images_per_s": sum(r["train_images_per_s"] for r in epochs_run) / len(epochs_run)}
    print("run", {k: round(v, 2) for k, v in out.items()}, flush=True)
    return out


def loader_vs_step(data, p: dict) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = BatchLoader(data, p["batch"], device, train=True, augment=BatchAugment(erase_p=0.5))
    start, n = time.perf_counter(), 0
    for n, _ in enumerate(loader, start=1):
        if n >= p["steps"]:
            break
    _sync()
    loader_s = (time.perf_counter() - start) / n
    step_ips = raw_step_images_per_s(p, device, device.type == "cuda", p["steps"])
    return {"loader_batches_per_s": 1 / loader_s, "model_steps_per_s": step_ips / p["batch"],
            "loader_time_over_step_time": loader_s / (p["batch"] / step_ips)}


def run_bench(out_dir: Path, sections: tuple[str, ...], methods: tuple[str, ...] = METHODS,
              synthetic_n: int = 100_000, rafdb_n: int = 12_271, knn_sizes: list[int] | None = None,
              knn_budget_s: float = 300, run_epochs: int | None = None) -> Path:
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:  # before anything runs: the k-NN section alone can take an hour on a CPU
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    gpu = torch.cuda.is_available()
    p = profile(gpu)
    if knn_sizes:
        p["knn_sizes"] = knn_sizes
    path = out_dir / f"bench-{socket.gethostname()}{'-gpu' if gpu else '-cpu'}.json"
    results: dict = json.loads(path.read_text()) if path.exists() else {}
    results.update(machine=machine())
    done: set[str] = set()
    for section in sections:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        if section == "train":
            results["train"] = bench_train(p, methods)
        elif section == "knn":
            results["knn"] = bench_knn(p["knn_sizes"], budget_s=knn_budget_s)
        elif section == "run":
            results["run"] = bench_run(p, rafdb_n, run_epochs or p["run_epochs"])
        elif section == "backbone":
            results["backbone"] = bench_backbones(p)
        elif section in ("cache", "loader") and not {"cache", "loader"} & done:  # one measurement for both
            results["cache"] = bench_cache_and_loader(p, synthetic_n, rafdb_n)
        results.setdefault("peak_memory_mb", {})[section] = peak_memory_mb()
        results.setdefault("section_seconds", {})[section] = time.perf_counter() - start
        results.setdefault("section_profile", {})[section] = p
        results.setdefault("section_time", {})[section] = time.strftime("%Y-%m-%dT%H:%M:%S")
        done.add(section)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    return path
