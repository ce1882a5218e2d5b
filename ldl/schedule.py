"""Schedules that scale with the run.

A schedule key (SCN's relabel start, SLM's ramp switch, LDLVA's warm-up and neighbour refresh,
the learning-rate warm-up) is a point in training progress, measured in completed epochs.  It
can be given in epochs (`9`, `2.5`) or as a fraction of the run, so a shortened study keeps a
method's schedule shape:

    relabel_start: 9/70      # after 9 of 70 epochs, as in the paper: 1.29 epochs of a 10-epoch run
    beta: 17.5%              # the same as 7/40

`to_epochs` turns either into epochs for a run of `total_epochs`; the run summary lists every
schedule in epochs (`schedule_table`).
"""
from __future__ import annotations

import re

from omegaconf import DictConfig

# Every key whose value may be a fraction of training (checked by ldl.config).
SCHEDULE_KEYS = ("optim.warmup_epochs", "method.scn.relabel_start", "method.slm_aea.beta",
                 "method.ldlva.warmup_epochs", "method.ldlva.refresh_every")

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def is_fraction(value: object) -> bool:
    return isinstance(value, str) and bool(_FRACTION.match(value) or _PERCENT.match(value))


def to_epochs(value: int | float | str, total_epochs: int) -> float:
    """Epochs of training progress for a schedule value: a number of epochs, 'a/b' (a of b
    epochs, e.g. the paper's 10/70) or 'p%' of this run's `total_epochs`."""
    if isinstance(value, bool):
        raise ValueError(f"schedule value must be epochs, 'a/b' or 'p%', got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if match := _FRACTION.match(value):
            numerator, denominator = float(match[1]), float(match[2])
            if denominator == 0:
                raise ValueError(f"schedule value {value!r}: the denominator is 0")
            return numerator / denominator * total_epochs
        if match := _PERCENT.match(value):
            return float(match[1]) / 100 * total_epochs
    raise ValueError(f"schedule value must be epochs, 'a/b' or 'p%', got {value!r}")


def schedule_table(cfg: DictConfig) -> dict[str, dict]:
    """The run's schedules (the optimiser's and its method's) as given and in epochs."""
    method = cfg.method.name
    table = {}
    for key in SCHEDULE_KEYS:
        parts = key.split(".")
        if parts[0] == "method" and parts[1] != method:
            continue
        node = cfg
        for part in parts:
            node = node[part]
        if node is not None:
            table[key] = {"given": node, "epochs": round(to_epochs(node, cfg.optim.epochs), 4)}
    return table
