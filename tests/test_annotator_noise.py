"""Issue 19: reports tell runs apart by realised noise, and annotator noise drawn from each
sample's own label distribution."""
import json

import numpy as np
import pytest
import yaml

from conftest import tiny
from ldl.cli import main
from ldl.report import group_runs, noise_label


def _fake_run(folder, noise_cfg, noise_summary, seed=0):
    """A run folder with just what grouping reads: config.yaml and summary.json's keys."""
    folder.mkdir()
    config = {"seed": seed, "run": {"dir": str(folder)}, "data": {"name": "synthetic", "noise": noise_cfg},
              "method": {"name": "ce"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder, {"dataset": "synthetic", "method": "ce", "seed": seed, "noise": noise_summary}


def test_groups_by_realised_rate_and_seeds_of_a_setting_stay_together(tmp_path):
    runs = dict([
        # one annotator setting, two noise seeds: 27.4 % and 28.7 % realised -> one row at 28 %
        _fake_run(tmp_path / "ann-0", {"type": "annotator", "seed": 0},
                  {"type": "annotator", "seed": 0, "realised_rate": 0.274}),
        _fake_run(tmp_path / "ann-1", {"type": "annotator", "seed": 1},
                  {"type": "annotator", "seed": 1, "realised_rate": 0.287}),
        # a label file has no configured rate (the old report called it clean)
        _fake_run(tmp_path / "file", {"type": "file", "file": "a.csv"},
                  {"type": "file", "file": "a.csv", "realised_rate": 0.004}),
        # before realised rates were saved: the configured rate
        _fake_run(tmp_path / "sym", {"type": "symmetric", "rate": 0.3}, {"type": "symmetric", "rate": 0.3}),
        # asked for noise, got none: clean
        _fake_run(tmp_path / "zero", {"type": "symmetric", "rate": 0.0},
                  {"type": "symmetric", "rate": 0.0, "realised_rate": 0.0}),
    ])
    groups, _ = group_runs(sorted(runs), runs)
    rows = {noise_label(k.noise_type, k.rate): sorted(r.name for r in members) for k, members in groups.items()}
    assert rows == {"annotator 28%": ["ann-0", "ann-1"], "file 0.4%": ["file"], "symmetric 30%": ["sym"],
                    "clean": ["zero"]}
    assert {k.method for k in groups} == {"ce"}   # noise settings never leak into the method label


def test_report_puts_a_label_file_run_at_its_realised_rate(tmp_path):
    base = [o for o in tiny(tmp_path / "unused", "optim.epochs=1", "data.synthetic.num_train=300", "model.width=8")
            if not o.startswith("run.dir")]
    noisy = tmp_path / "noisy.csv"
    # A label file with 96 of 300 labels (32 %) moved to another class, as a real label file would be.
    assert main(["noise", "--type", "symmetric", "--rate", "0.32", "--seed", "3", "--out", str(noisy), *base]) == 0
    sweep = tmp_path / "sweep"
    for name, extra in (("clean", []), ("file", ["data.noise.type=file", f"data.noise.file={noisy}"])):
        assert main(["train", *base, f"run.dir={sweep / name}", *extra]) == 0
    summary = json.loads((sweep / "file" / "summary.json").read_text())
    assert summary["noise"]["realised_rate"] == pytest.approx(0.32)
    assert main(["report", str(sweep), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| synthetic | ce | file 32% | 1 |" in md and "| synthetic | ce | clean | 1 |" in md
    assert md.count("| clean |") == 1
    assert "### Label noise: synthetic, file 32% (clean label by given label)" in md
    assert "### Accuracy against realised noise rate, shared protocol" in md
    assert "Memorisation: synthetic, file 32%, shared protocol" in md
