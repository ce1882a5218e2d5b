"""Seeded label-noise injection for the training split, and noisy-label files.

Types
- symmetric: exactly round(rate*N) samples move to a uniformly chosen other class;
- asymmetric: within each class c, round(rate*N_c) samples move to PAIR_MAP[c], a FER
  confusion map (anger<->disgust, fear->surprise, happy->neutral, sad->neutral,
  surprise->anger, neutral->sad, contempt->disgust);
- instance: flips concentrate on ambiguous samples.  With a ground-truth distribution the
  flip probability is proportional to 1 - q(y) and the new label is drawn from q without y
  (a confusable class); without one, Xia et al. (NeurIPS 2020)'s part-dependent scheme on
  8x8 thumbnails is used (per-sample rate ~ N(rate, 0.1) clipped, flip target by a random
  class-conditional projection);
- annotator: real annotator disagreement, for datasets with per-sample label distributions q
  (FERPlus votes, RAF-DB's distribution_basic.txt, manifest p_<Class> columns, the synthetic
  truth; else AffectNet+ soft labels).  The clean label is q's argmax (ties within 1e-6 go to the
  dataset's own label when it is among them, else to the first class in canonical order); the
  training label is one draw from q_T = q^(1/T) / sum(q^(1/T)), as a single annotator would
  label the face (T < 1 sharpens q and lowers the rate, T > 1 flattens it).  No rate is
  configured: the realised rate follows from the distributions, and its expectation
  mean(1 - q_T(clean)) is saved beside it.

Group-dependent noise (data.noise.group_attribute, groups, group_rates) injects a rate-based type
within each group of a demographic attribute at that group's own rate (e.g. 10 % on one skin
tone, 40 % on the other), on top of the type's scheme; the asked and realised rate per group are
reported beside the overall ones.

The clean labels stay beside the noisy ones; the realised rate and the transition matrix
(rows: clean class, columns: noisy class, row-normalised) are reported.
"""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ldl.data.dataset import FERData

# Canonical indices: 0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt.
PAIR_MAP = {0: 2, 1: 0, 2: 0, 3: 6, 4: 3, 5: 6, 6: 5, 7: 5}
MADE_BY_KEYS = ("type", "rate", "seed", "temperature", "realised_rate")
NOISE_TYPES = ("none", "symmetric", "asymmetric", "instance", "annotator")
GROUP_NOISE_TYPES = ("symmetric", "asymmetric", "instance")
TIE_TOLERANCE = 1e-6   # distributions are float32: classes this close to the maximum tie


def _symmetric(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    noisy = labels.copy()
    flip = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    shift = rng.integers(1, num_classes, size=len(flip))  # never the same class
    noisy[flip] = (labels[flip] + shift) % num_classes
    return noisy


def _asymmetric(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    noisy = labels.copy()
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        target = PAIR_MAP[c]
        if target >= num_classes or len(members) == 0:
            continue
        flip = rng.choice(members, size=int(round(rate * len(members))), replace=False)
        noisy[flip] = target
    return noisy


def _instance(data: FERData, rate: float, rng: np.random.Generator) -> np.ndarray:
    labels, c = data.labels, data.num_classes
    noisy = labels.copy()
    n = len(labels)
    if data.dist is not None:
        q = data.dist[:, :c].astype(np.float64)
        ambiguity = 1 - q[np.arange(n), labels] + 1e-6
        flip = rng.choice(n, size=int(round(rate * n)), replace=False, p=ambiguity / ambiguity.sum())
        other = q[flip].copy()
        other[np.arange(len(flip)), labels[flip]] = 0
        empty = other.sum(1) == 0
        other[empty] = 1
        other[empty, labels[flip][empty]] = 0
        other /= other.sum(1, keepdims=True)
        noisy[flip] = (rng.random(len(flip))[:, None] > np.cumsum(other, 1)).sum(1).clip(max=c - 1)
        return noisy
    thumbs = _thumbnails(data.images).astype(np.float64)
    thumbs = (thumbs - thumbs.mean(0)) / (thumbs.std(0) + 1e-6)
    weights = rng.standard_normal((c, thumbs.shape[1], c))
    per_sample_rate = np.clip(rng.normal(rate, 0.1, n), 0, 1)
    for i in range(n):
        scores = thumbs[i] @ weights[labels[i]]
        scores[labels[i]] = -np.inf
        p = np.exp(scores - scores.max())
        p = per_sample_rate[i] * p / p.sum()
        p[labels[i]] = 1 - per_sample_rate[i]
        noisy[i] = rng.choice(c, p=p)
    return noisy


def annotator_distribution(data: FERData, dataset: str = "this dataset") -> tuple[np.ndarray, str]:
    """Each training sample's label distribution over the protocol's classes, and its source
    ('dist': votes, distribution file or truth; 'soft': soft labels)."""
    for source in ("dist", "soft"):
        q = getattr(data, source)
        if q is not None:
            q = np.asarray(q, dtype=np.float64)[:, : data.num_classes]
            return q / q.sum(1, keepdims=True), source
    raise ValueError(f"data.noise.type=annotator draws each label from the sample's own label distribution, but the "
                     f"{dataset} training split has none (FERPlus votes, RAF-DB's distribution_basic.txt, AffectNet+ "
                     "soft labels, manifest p_<Class> columns and the synthetic set carry them)")


def distribution_argmax(q: np.ndarray, given: np.ndarray) -> np.ndarray:
    """q's argmax per row; ties go to the given label when it is among them, else the first class."""
    tied = q >= q.max(1, keepdims=True) - TIE_TOLERANCE
    first = tied.argmax(1)
    return np.where(tied[np.arange(len(q)), given], given, first)


def sharpen(q: np.ndarray, temperature: float) -> np.ndarray:
    """q^(1/T), renormalised (computed in log space so small T does not underflow to 0/0)."""
    with np.errstate(divide="ignore"):
        logits = np.log(q) / temperature
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def draw_labels(q: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """One class per row by inverse CDF: class k when cdf[k-1] <= u < cdf[k]; the CDF is divided
    by its last entry so rounding never selects past the last class with mass."""
    cdf = np.cumsum(q, 1)
    cdf /= cdf[:, -1:]
    return (uniforms[:, None] >= cdf).sum(1)


def _annotator(data: FERData, temperature: float, rng: np.random.Generator, dataset: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if not temperature > 0:
        raise ValueError(f"data.noise.temperature must be > 0, got {temperature}")
    q, source = annotator_distribution(data, dataset)
    clean = distribution_argmax(q, data.labels)
    q_t = sharpen(q, temperature)
    noisy = draw_labels(q_t, rng.random(len(q)))
    report = {"temperature": temperature, "source": source,
              "expected_rate": float(1 - q_t[np.arange(len(q)), clean].mean())}
    return clean, noisy, report


def _thumbnails(images: np.ndarray, side: int = 8) -> np.ndarray:
    n, h, w, _ = images.shape
    gray = np.asarray(images, dtype=np.float32).mean(-1)
    return gray[:, : h - h % side, : w - w % side].reshape(n, side, h // side, side, w // side).mean((2, 4)).reshape(n, -1)


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def inject(data: FERData, noise_type: str, rate: float, seed: int, temperature: float = 1.0,
           dataset: str = "this dataset", group_attribute: str | None = None,
           group_rates: Mapping[str, float] | None = None) -> FERData:
    if group_attribute and noise_type not in GROUP_NOISE_TYPES:
        raise ValueError(f"data.noise.group_attribute={group_attribute!r}: group-dependent noise takes a rate-based "
                         f"data.noise.type ({', '.join(GROUP_NOISE_TYPES)}), got {noise_type!r}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"data.noise.type must be one of {NOISE_TYPES}, got {noise_type!r}")
    if not 0 <= rate <= 0.5:
        raise ValueError(f"data.noise.rate must be within [0, 0.5], got {rate}")
    clean = data.labels if data.clean_labels is None else data.clean_labels
    rng = np.random.default_rng(seed)
    if noise_type == "annotator":
        if rate:
            raise ValueError(f"data.noise.rate={rate} does not apply to annotator noise: its rate follows from "
                             "the label distributions (data.noise.temperature moves it); leave the rate at 0")
        clean, noisy, report = _annotator(replace(data, labels=clean), temperature, rng, dataset)
        return _with_noisy_labels(data, clean, noisy, {"type": noise_type, "seed": seed, **report})
    base = replace(data, labels=clean)
    spec = {"type": noise_type, "rate": rate, "seed": seed}
    if group_attribute:
        noisy, spec["by_group"] = _by_group(base, noise_type, rate, rng, group_attribute, dict(group_rates or {}))
    else:
        noisy = _rate_noise(base, noise_type, rate, rng)
    return _with_noisy_labels(data, clean, noisy, spec)


def _rate_noise(base: FERData, noise_type: str, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy labels of one rate-based type from the clean labels `base.labels`."""
    if noise_type == "instance":
        return _instance(base, rate, rng)
    return _label_noise(base.labels, base.num_classes, noise_type, rate, rng)


def _label_noise(labels: np.ndarray, num_classes: int, noise_type: str, rate: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The types that read nothing but the labels (symmetric, asymmetric; none: a copy)."""
    if noise_type == "symmetric":
        return _symmetric(labels, rate, num_classes, rng)
    if noise_type == "asymmetric":
        return _asymmetric(labels, rate, num_classes, rng)
    return labels.copy()


def _by_group(base: FERData, noise_type: str, rate: float, rng: np.random.Generator, attribute: str,
              rates: dict[str, float]) -> tuple[np.ndarray, dict]:
    """Group-dependent noise: the type's own scheme within each group of `attribute` at that
    group's rate (`rate` for groups not named, and for unknown values), groups in sorted order
    from one generator.  Returns the noisy labels and the asked and realised rate per group."""
    if attribute not in base.groups:
        raise ValueError(f"data.noise.group_attribute={attribute!r}: the training split has no such attribute "
                         f"(it has: {', '.join(sorted(base.groups)) or 'none'})")
    values = base.groups[attribute]
    absent = sorted(set(rates) - set(values.tolist()))
    if absent:
        raise ValueError(f"data.noise.groups: {absent} not among the training split's {attribute} groups "
                         f"{sorted(set(values.tolist()) - {''})}")
    for group, group_rate in rates.items():
        if not 0 <= group_rate <= 0.5:
            raise ValueError(f"data.noise.group_rates: {group} at {group_rate} is outside [0, 0.5]")
    noisy, report = base.labels.copy(), {}
    for group in np.unique(values):
        members = np.flatnonzero(values == group)
        group_rate = rates.get(str(group), rate)
        if noise_type == "instance":   # its scheme reads the group's distributions or images
            noisy[members] = _instance(base.select(members), group_rate, rng)
        else:   # the labels alone: no copy of the group's images (GBs on AffectNet, memory-mapped)
            noisy[members] = _label_noise(base.labels[members], base.num_classes, noise_type, group_rate, rng)
        report[str(group) or "unknown"] = {"rate": group_rate, "n": int(len(members)),
                                           "realised_rate": float((noisy[members] != base.labels[members]).mean())}
    return noisy, {"attribute": attribute, "groups": report}


def _off_argmax(data: FERData, noisy: np.ndarray) -> dict:
    """Where the split carries label distributions, how often the labels trained on and the dataset's
    own labels differ from the distribution's argmax: the one reference that every kind of noise
    shares.  Annotator noise counts its rate from the argmax, the rate-based kinds from the dataset's
    labels, which on a set whose labels are themselves annotator draws (the synthetic world) already
    differ from it, so the two realised rates alone do not compare."""
    if data.dist is None and data.soft is None:
        return {}
    q, _ = annotator_distribution(data)
    given = data.labels if data.clean_labels is None else data.clean_labels
    argmax = distribution_argmax(q, given)
    return {"off_argmax_rate": float((noisy != argmax).mean()),
            "argmax_differs_from_dataset_label": float((given != argmax).mean())}


def _with_noisy_labels(data: FERData, clean: np.ndarray, noisy: np.ndarray, spec: dict) -> FERData:
    info = dict(data.info)
    info["noise"] = {**spec, **_off_argmax(data, noisy), "realised_rate": float((noisy != clean).mean()),
                     "transition_matrix": transition_matrix(clean, noisy, data.num_classes).round(4).tolist()}
    return replace(data, labels=noisy.astype(np.int64), clean_labels=clean.copy(), info=info)


def write_noise_file(path: Path, names: Sequence, labels: Sequence[int], clean_labels: Sequence[int],
                     noise: Mapping) -> None:
    """CSV `name,label,clean_label` (canonical indices) that `data.noise.file` reads back, and
    beside it (`<file>.json`) how the noise was made (`noise`: a split's info["noise"]), so that runs
    on the file are reported under the kind of noise that made it (`file (symmetric 16%)`), not as
    one anonymous `file` row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "label", "clean_label"])
        for name, label, clean in zip(names, labels, clean_labels):
            writer.writerow([name, int(label), int(clean)])
    made_by = {k: v for k, v in noise.items() if k in MADE_BY_KEYS}
    path.with_name(path.name + ".json").write_text(json.dumps(made_by, indent=1))


def made_by_label(made_by: dict) -> str:
    """`symmetric 16%`, `annotator T=2`: the kind and asked strength of the noise a file holds."""
    if made_by.get("type") == "annotator":
        return f"annotator T={made_by.get('temperature', 1.0):g}"
    return f"{made_by.get('type', 'unknown')} {made_by.get('rate', 0):.0%}"


def read_noise_file(path: Path, data: FERData) -> FERData:
    """Replace the training labels by those of a noisy-label file, matched by sample name."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"data.noise.file: {path} not found")
    by_name: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:2] != ["name", "label"]:
            raise ValueError(f"{path}:1: expected a header 'name,label[,clean_label]', got {header}")
        for line_no, row in enumerate(reader, start=2):
            try:
                label = int(row[1])
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{line_no}: malformed line {row!r}") from None
            if not 0 <= label < data.num_classes:
                raise ValueError(f"{path}:{line_no}: label {label} outside 0..{data.num_classes - 1}")
            by_name[row[0]] = label
    missing = [str(n) for n in data.names if str(n) not in by_name]
    if missing:
        raise ValueError(f"{path}: no label for {len(missing)} training samples, e.g. {missing[:3]}")
    clean = data.labels if data.clean_labels is None else data.clean_labels
    noisy = np.array([by_name[str(n)] for n in data.names], dtype=np.int64)
    spec = {"type": "file", "file": str(path)}
    made_by = Path(str(path) + ".json")
    if made_by.is_file():
        try:
            spec["made_by"] = json.loads(made_by.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{made_by}:{error.lineno}: not the JSON note `ldl noise` writes beside a label file "
                             f"({error.msg}); fix or delete it") from None
    return _with_noisy_labels(data, clean, noisy, spec)


def apply_noise(data: FERData, noise_cfg, dataset: str = "this dataset") -> FERData:
    groups, rates = [str(g) for g in noise_cfg.groups], [float(r) for r in noise_cfg.group_rates]   # names, as loaded
    if len(groups) != len(rates) or (groups and not noise_cfg.group_attribute):
        raise ValueError(f"data.noise.groups {groups} and data.noise.group_rates {rates} must pair up, one rate per "
                         "group, under a data.noise.group_attribute")
    if noise_cfg.type == "file" and not noise_cfg.group_attribute:
        return read_noise_file(Path(noise_cfg.file), data)
    return inject(data, noise_cfg.type, float(noise_cfg.rate), int(noise_cfg.seed),
                  float(noise_cfg.temperature), dataset, noise_cfg.group_attribute, dict(zip(groups, rates)))
