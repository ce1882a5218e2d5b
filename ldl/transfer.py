"""What explains a cross-dataset matrix: per-dataset and per-pair measures for `ldl cross`.

For every ordered pair (source i, target j) the measures compare what the model of i learned
from, the training split of i as trained on (noise included), with what it is tested on, the
test split of j; so the diagonal compares a dataset's own train and test splits and is the
finite-sample floor of each distance.  Per dataset: the paper's Local and Global Similarity,
the mean entropy of the training labels' distributions where the dataset has them, and the
noise rate estimated from the trained method's exported noise score.

Feature statistics (mean, covariance and a fixed random subsample of pooled features under a
fixed backbone) are computed once per split and cached with the data cache, keyed by the
split's image bytes and the backbone, so adding a dataset to a study costs one pass over it.

Plan section (all optional; these are the defaults):
    similarity:
      metric: macro_f1        # the performance the paper's measures and the drops use
      backbone: {arch: resnet18, width: 64, stem: small, pretrained: null, input_size: null}
                              # pretrained null: random weights, seeded; arch: dlib_face gives the
                              # face-recognition descriptor (its own weights; input_size as model.input_size)
      seed: 0
      batch_size: 256
      mmd_samples: 500        # features per split kept for the MMD test
      permutations: 500
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ldl import similarity as sim
from ldl.data import BatchLoader, FERData, build_splits
from ldl.data.cache import fingerprint_files, load_or_compute_arrays
from ldl.models import build_model
from ldl.train import resolve_device

DEFAULTS = {"metric": "macro_f1",
            "backbone": {"arch": "resnet18", "width": 64, "stem": "small", "pretrained": None, "input_size": None},
            "seed": 0, "batch_size": 256, "mmd_samples": 500, "permutations": 500}
METRICS = ("accuracy", "mean_class_accuracy", "macro_f1")
NOISE_SCORES = ("noise_score", "train_pass_noise_score")   # a method's own score, in that preference
DISTANCES = ("prior_js", "label_js", "frechet", "mmd")      # the pair measures a drop is set against
FEATURE_CACHE_VERSION = 1


def settings(section: dict | None) -> dict:
    """The plan's `similarity` section over the defaults; an unknown key is an error."""
    section = dict(section or {})
    unknown = sorted(set(section) - set(DEFAULTS)) + sorted(
        f"backbone.{k}" for k in set(section.get("backbone") or {}) - set(DEFAULTS["backbone"]))
    if unknown:
        raise ValueError(f"cross plan: unknown similarity key(s) {unknown}; known: {sorted(DEFAULTS)}, "
                         f"backbone.{{{', '.join(DEFAULTS['backbone'])}}}")
    out = {**DEFAULTS, **section, "backbone": {**DEFAULTS["backbone"], **(section.get("backbone") or {})}}
    if out["metric"] not in METRICS:
        raise ValueError(f"cross plan: similarity.metric must be one of {METRICS}, got {out['metric']!r}")
    return out


def _content_digest(images: np.ndarray) -> str:
    """sha1 of a split's uint8 images (read in chunks: a memory-mapped split stays on disk)."""
    h = hashlib.sha1(str(images.shape).encode())
    for start in range(0, len(images), 4096):
        h.update(np.ascontiguousarray(images[start:start + 4096]).tobytes())
    return h.hexdigest()


def _backbone(backbone: dict, seed: int, device: torch.device) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):   # random weights from `seed`, the caller's stream untouched
        torch.manual_seed(seed)
        net = build_model(backbone["arch"], 7, backbone["width"], backbone["stem"], backbone["pretrained"],
                          backbone["input_size"], neck="none")   # the backbone's own features
    return net.to(device).eval()


def feature_statistics(data: FERData, cfg: DictConfig, split: str, opts: dict) -> dict[str, np.ndarray]:
    """Mean, covariance, count and a seeded subsample of the pooled features of one split,
    from the data cache or computed in one pass (with a progress bar) and cached."""
    backbone = opts["backbone"]
    weights = backbone["pretrained"]
    key = {"dataset": f"{cfg.data.name}-features", "split": split, "images": _content_digest(data.images),
           "backbone": backbone, "weights": fingerprint_files([Path(weights).expanduser()]) if weights else None,
           "seed": opts["seed"], "mmd_samples": opts["mmd_samples"], "version": FEATURE_CACHE_VERSION}

    def compute() -> dict[str, np.ndarray]:
        device = resolve_device(cfg.device)
        net = _backbone(backbone, opts["seed"], device)
        loader = BatchLoader(data, opts["batch_size"], device, train=False, gpu_resident=False)
        chunks = []
        with torch.no_grad(), tqdm(total=len(data), desc=f"features {cfg.data.name} {split}", unit="img",
                                   disable=not cfg.log.progress) as bar:
            for batch in loader:
                chunks.append(net(batch["image"])["features"].double().cpu())
                bar.update(len(batch["index"]))
        feats = torch.cat(chunks).numpy()
        if len(feats) < 2:
            raise ValueError(f"{cfg.data.name} {split}: feature statistics need at least 2 images, got {len(feats)}")
        pick = np.random.default_rng(opts["seed"]).choice(len(feats), min(len(feats), opts["mmd_samples"]), replace=False)
        return {"mean": feats.mean(0), "cov": np.cov(feats, rowvar=False), "sample": feats[np.sort(pick)],
                "count": np.array(len(feats))}

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    return load_or_compute_arrays(key, compute, cache_dir)


def _noise_from_run(run_dir: Path) -> dict:
    """The noise rate the trained method estimated (its own score in samples.csv) and the one
    realised by injected noise (summary.json), where each exists."""
    out: dict = {"estimated_noise_rate": None, "noise_score": None, "realised_noise_rate": None}
    samples = run_dir / "samples.csv"
    if samples.is_file():
        with open(samples) as f:
            rows = list(csv.DictReader(f))
        column = next((c for c in NOISE_SCORES if rows and c in rows[0]), None)
        if column:
            rate = sim.estimated_noise_rate(np.array([float(r[column]) for r in rows]))
            out.update(estimated_noise_rate=None if np.isnan(rate) else rate, noise_score=column)
    summary = run_dir / "summary.json"
    if summary.is_file():
        noise = json.loads(summary.read_text()).get("noise") or {}
        if "realised_rate" in noise:
            out["realised_noise_rate"] = float(noise["realised_rate"])
    return out


def _distribution(data: FERData) -> np.ndarray | None:
    """Per-sample label distributions: votes / ground truth (`dist`), else teacher soft labels."""
    return data.dist if data.dist is not None else data.soft


def _finite_or_none(matrix: np.ndarray) -> list:
    return [[float(v) if np.isfinite(v) else None for v in row] for row in matrix]


def explain(result: dict, configs: dict[str, DictConfig], run_dirs: dict[str, Path], section: dict | None) -> dict:
    """Per-dataset and per-pair measures for a cross result (datasets in `result['datasets']`,
    a matrix per metric), from each dataset's config and its training run's folder."""
    opts = settings(section)
    names = result["datasets"]
    n = len(names)
    matrix = np.array(result[opts["metric"]], dtype=float)
    splits = {name: build_splits(configs[name], ("train", "test")) for name in names}
    source = {name: splits[name]["train"] for name in names}
    target = {name: splits[name]["test"] for name in names}
    feats = {(name, part): feature_statistics(data, configs[name], part, opts)
             for name in names for part, data in (("train", source[name]), ("test", target[name]))}

    pairs = {key: np.full((n, n), np.nan) for key in (*DISTANCES, "mmd_p")}
    with tqdm(total=n * n, desc="transfer measures", unit="pair", disable=not configs[names[0]].log.progress) as bar:
        for i, a in enumerate(names):
            prior_a = sim.class_prior(source[a].labels, source[a].num_classes)
            for j, b in enumerate(names):
                pairs["prior_js"][i, j] = sim.js_divergence(prior_a, sim.class_prior(target[b].labels,
                                                                                     target[b].num_classes))
                dist_a, dist_b = _distribution(source[a]), _distribution(target[b])
                if dist_a is not None and dist_b is not None:
                    pairs["label_js"][i, j] = sim.label_distribution_divergence(dist_a, dist_b)
                fa, fb = feats[(a, "train")], feats[(b, "test")]
                pairs["frechet"][i, j] = sim.frechet_distance(fa["mean"], fa["cov"], fb["mean"], fb["cov"])
                pairs["mmd"][i, j], pairs["mmd_p"][i, j] = sim.mmd_test(fa["sample"], fb["sample"],
                                                                      opts["permutations"], opts["seed"])
                bar.update()
    pairs["paired_similarity"] = sim.paired_similarity(matrix)
    pairs["transfer_drop"] = sim.transfer_drop(matrix)

    off = ~np.eye(n, dtype=bool)
    correlations = {}
    for key in DISTANCES:
        rho, p, count = sim.spearman(pairs[key][off], pairs["transfer_drop"][off])
        correlations[key] = {"spearman_rho": None if np.isnan(rho) else rho, "p_value": None if np.isnan(p) else p,
                             "pairs": count}

    local, glob = sim.local_similarity(matrix), sim.global_similarity(matrix)
    per_dataset = {}
    for i, name in enumerate(names):
        dist = _distribution(source[name])
        per_dataset[name] = {"local_similarity": float(local[i]), "global_similarity": float(glob[i]),
                             "mean_off_diagonal": float(matrix[i, off[i]].mean()),
                             "label_entropy": None if dist is None else sim.mean_normalised_entropy(dist),
                             **_noise_from_run(run_dirs[name])}
    return {"metric": opts["metric"], "settings": opts, "per_dataset": per_dataset,
            "pairs": {key: _finite_or_none(value) for key, value in pairs.items()},
            "correlations": correlations,
            "direction": "rows: source (its training split, as trained on); columns: target (its test split)"}
