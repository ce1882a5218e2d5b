"""Do the runs of two sweep folders that share every setting and seed give the same numbers?

A study that repeats another's runs (issue 18's landmark start repeats issue 15's paper-protocol
runs) should reproduce them bit for bit on CPU.  Runs are matched on their resolved config without
bookkeeping (run.*, log.*, device.*), on the keys both configs hold (keys added to the package
since the older study ran are listed, not compared); compared are every per-epoch record but its
wall-clock timings, and the final metrics.

    python benchmarks/same_numbers.py sweeps/face_start sweeps/memorisation
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ldl.config import flatten, read_yaml
from ldl.report import BOOKKEEPING_SECTIONS, find_runs

TIMINGS = ("epoch_time", "train_images_per_s", "eval_time")


def setting(run: Path) -> dict:
    config = flatten(read_yaml(run / "config.yaml"))
    return {k: v for k, v in config.items() if k.split(".")[0] not in BOOKKEEPING_SECTIONS}


def same_setting(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def numbers(run: Path) -> tuple[list[dict], dict]:
    history = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return history, json.loads((run / "summary.json").read_text())["final"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    first = {run: setting(run) for run in find_runs([args.first])[0]}
    second = {run: setting(run) for run in find_runs([args.second])[0]}
    pairs = [(a, b) for a, sa in first.items() for b, sb in second.items() if same_setting(sa, sb)]
    unshared = sorted({k for sa in first.values() for sb in second.values() for k in sa.keys() ^ sb.keys()})
    if unshared:
        print(f"not compared (in one study's configs only): {', '.join(unshared)}")
    differ = [(a, b) for a, b in pairs if numbers(a) != numbers(b)]
    for a, b in differ:
        acc = [numbers(r)[1]["test"]["accuracy"] for r in (a, b)]
        print(f"differ: {a.name} (test accuracy {acc[0]:.4f}) vs {b.name} ({acc[1]:.4f})")
    print(f"{len(pairs)} runs of {args.first} repeat a run of {args.second}: "
          f"{len(pairs) - len(differ)} identical in every epoch and the final metrics, {len(differ)} differ")


if __name__ == "__main__":
    main()
