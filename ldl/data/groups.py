"""Demographic group attributes of samples, and sub-sampling a training split to a group mix.

A sample's group under an attribute is a string ("female", "20-39", "dark"); "" means that
sample's value is unknown.  Loaders hand per-sample dicts {attribute: group} to `stack_groups`;
an attribute no sample has is absent, as every other optional field is.

Age is binned as RAF-DB's manual annotations bin it (0-3, 4-19, 20-39, 40-69, 70+), so that an
age gap reads the same on every dataset that has ages.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ldl.data.dataset import FERData

MISSING = ""
AGE_BINS = ((0, "0-3"), (4, "4-19"), (20, "20-39"), (40, "40-69"), (70, "70+"))   # (lowest age, name)


def parse_age(value: object) -> str | None:
    """The age bin of a number of years, or None if `value` is not a finite age >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return [name for low, name in AGE_BINS if value >= low][-1]


def parse_probabilities(value: object) -> tuple[str, dict[str, float]] | None:
    """A {group: probability} dict -> (its argmax group, the probabilities normalised to sum 1),
    or None when it is not a dict of finite non-negative numbers with a positive sum.  Ties go
    to the first group in sorted order, so every file reads the same whatever its key order."""
    if not isinstance(value, dict) or not value:
        return None
    try:
        probs = {str(k): float(v) for k, v in sorted(value.items())}
    except (TypeError, ValueError):
        return None
    total = sum(probs.values())
    if not all(math.isfinite(p) and p >= 0 for p in probs.values()) or total <= 0:
        return None
    return max(probs, key=probs.get), {k: p / total for k, p in probs.items()}   # max keeps the first of ties


def stack_groups(rows: Sequence[Mapping[str, str]]) -> dict[str, np.ndarray]:
    """Per-sample {attribute: group} dicts -> {attribute: str [N]}, MISSING where a sample lacks it."""
    names = sorted({name for row in rows for name in row})
    return {name: np.array([row.get(name, MISSING) for row in rows], dtype=str) for name in names}


def stack_probabilities(rows: Sequence[Mapping[str, Mapping[str, float]]]) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Per-sample {attribute: {group: p}} -> ({attribute: float32 [N, K]}, {attribute: K column
    names}); the columns are every group any sample names, NaN rows where a sample has none."""
    arrays, columns = {}, {}
    for name in sorted({name for row in rows for name in row}):
        cols = sorted({g for row in rows for g in row.get(name, {})})
        table = np.full((len(rows), len(cols)), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            for j, g in enumerate(cols):
                if name in row:
                    table[i, j] = row[name].get(g, 0.0)
        arrays[name], columns[name] = table, cols
    return arrays, columns


def group_counts(data: FERData) -> dict[str, dict[str, int]]:
    """Samples per group of every attribute (unknown values under "unknown")."""
    out = {}
    for name, values in data.groups.items():
        groups, counts = np.unique(values, return_counts=True)
        out[name] = {(str(g) or "unknown"): int(c) for g, c in zip(groups, counts)}
    return out


def counts_for(proportions: Sequence[float], size: int) -> np.ndarray:
    """Integer counts summing to `size` in the given proportions (largest remainders get the rest).
    The proportions are normalised first: callers accept sums within 1e-6 of 1, and without it a
    sum above 1 floors to more than `size` at a million samples, and the rest goes negative."""
    shares = np.asarray(proportions, dtype=float)
    exact = shares / shares.sum() * size
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: size - counts.sum()]] += 1
    return counts


def sample_group_mix(data: FERData, attribute: str, groups: Sequence[str], proportions: Sequence[float],
                     size: int, seed: int) -> FERData:
    """A seeded sub-sample of `size` samples with `proportions[i]` of them from `groups[i]` (every
    other group, and unknown values, left out), in the original order; the mix asked for and the
    counts drawn are recorded in info["group_mix"].  The size stays fixed across mixes, so that
    a balance study compares mixes, not amounts of data."""
    if attribute not in data.groups:
        known = ", ".join(sorted(data.groups)) or "none"
        raise ValueError(f"data.group_mix.attribute={attribute!r}: the training split has no such attribute "
                         f"(it has: {known})")
    # groups are names (loaders read them as text): `[0, 1]` on the command line means '0' and '1'
    groups, proportions = [str(g) for g in groups], [float(p) for p in proportions]
    if len(groups) != len(proportions) or not groups or len(set(groups)) != len(groups):
        raise ValueError(f"data.group_mix: groups {groups} and proportions {proportions} must be non-empty "
                         "lists of the same length, each group once")
    if min(proportions) < 0 or not math.isclose(sum(proportions), 1, abs_tol=1e-6):
        raise ValueError(f"data.group_mix.proportions {proportions} must be >= 0 and sum to 1")
    if size is None or size < 1 or float(size) != int(size):
        raise ValueError(f"data.group_mix.size must be a positive whole number of training samples, got {size} "
                         "(fixed across the mixes a study compares)")
    size = int(size)   # 1e3 from YAML or the command line is a float
    values = data.groups[attribute]
    rng = np.random.default_rng(seed)
    chosen = []
    for group, count in zip(groups, counts_for(proportions, size)):
        members = np.flatnonzero(values == group)
        if count > len(members):
            raise ValueError(f"data.group_mix: {count} of {size} training samples must come from {attribute}="
                             f"{group}, but the split has only {len(members)} (its groups: "
                             f"{group_counts(data)[attribute]}); lower data.group_mix.size")
        chosen.append(rng.choice(members, size=count, replace=False))
    out = data.select(np.sort(np.concatenate(chosen)))   # select copies info: the pool's stays as it was
    out.info["group_mix"] = {"attribute": attribute, "groups": groups, "proportions": proportions, "size": size,
                         "seed": seed, "counts": group_counts(out)[attribute], "pool": group_counts(data)[attribute]}
    return out
