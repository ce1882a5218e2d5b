import json

import numpy as np
import pytest
import yaml

import formats
from conftest import tiny
from ldl.cli import main
from ldl.config import ConfigError
from ldl.report import group_runs
from ldl.sweep import SweepError, expand, load_sweep, run_local


def sweep_file(tmp_path, spec):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_expansion_counts_and_names():
    spec = {"method": "grid", "command": ["ldl", "train", "${args_no_hyphens}"],
            "parameters": {"method.name": {"values": ["ce", "ldlva"]}, "seed": {"values": [0, 1, 2]},
                           "data.noise.rate": {"value": 0.2}}}
    runs = expand(spec)
    assert len(runs) == 6 and len({r.run_id for r in runs}) == 6
    assert runs[0].overrides == ["method.name=ce", "seed=0", "data.noise.rate=0.2"]


def test_random_expansion_is_seeded_and_within_bounds():
    spec = {"method": "random", "run_cap": 50, "command": ["ldl", "train", "${args_no_hyphens}"],
            "parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                           "optim.epochs": {"distribution": "int_uniform", "min": 2, "max": 4},
                           "method.name": {"values": ["ce", "scn"]}}}
    a, b, c = expand(spec, seed=1), expand(spec, seed=1), expand(spec, seed=2)
    assert [r.overrides for r in a] == [r.overrides for r in b] != [r.overrides for r in c]
    lrs = np.array([float(r.overrides[0].split("=")[1]) for r in a])
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2 and np.log10(lrs).std() > 0.3   # spread in log space
    assert {int(r.overrides[1].split("=")[1]) for r in a} == {2, 3, 4}


def test_bad_sweep_files(tmp_path):
    with pytest.raises(SweepError, match="method"):
        load_sweep(sweep_file(tmp_path, {"method": "bayes", "parameters": {"a": {"value": 1}}}))
    with pytest.raises(SweepError, match="args_no_hyphens"):
        load_sweep(sweep_file(tmp_path, {"method": "grid", "command": ["python", "x.py"], "parameters": {"a": {"value": 1}}}))


def test_local_sweep_skips_finished_records_failures_and_reports(tmp_path):
    overrides = [o for o in tiny(tmp_path / "unused", "optim.epochs=1", "data.noise.type=symmetric",
                                 "data.synthetic.num_train=600", "model.width=8") if not o.startswith("run.dir")]
    spec = {"method": "grid", "command": ["ldl", "train", *overrides, "${args_no_hyphens}"],
            "parameters": {"method.name": {"values": ["ce", "ldlva", "no_such_method"]},
                           "data.noise.rate": {"values": [0.0, 0.3]}}}
    path = sweep_file(tmp_path, spec)
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--out", str(out), "--workers", "2"]) == 1   # failures -> exit 1
    status = json.loads((out / "sweep_status.json").read_text())
    states = sorted(v["state"] for v in status.values())
    assert states == ["failed", "failed", "finished", "finished", "finished", "finished"]
    failed = [k for k, v in status.items() if v["state"] == "failed"]
    assert all("unknown method.name 'no_such_method'" in (out / k / "error.txt").read_text() for k in failed)
    finished = {k: (out / k / "summary.json").stat().st_mtime for k, v in status.items() if v["state"] == "finished"}
    # A second invocation skips the finished runs (their summaries are untouched).
    run_local(load_sweep(path), out, workers=1, progress=False)
    assert {k: (out / k / "summary.json").stat().st_mtime for k in finished} == finished

    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    md = (report / "report.md").read_text()
    assert "| synthetic | ldlva | symmetric 30% | 1 |" in md and "| synthetic | ce | clean | 1 |" in md
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "<table>" in page
    assert (report / "figures").is_dir()


def test_report_separates_method_variants_and_counts_repeats_once(tmp_path):
    # A grid over method.name x method.ldlva.mode: LDLVA's two modes are different methods to
    # report, CE ignores the mode (its two runs per seed repeat each other), and the run folder
    # and the seed are not settings.
    def run(name, method, mode, seed, width=16):
        folder = tmp_path / name
        folder.mkdir()
        config = {"seed": seed, "run": {"dir": str(folder)}, "model": {"width": width},
                  "data": {"name": "synthetic", "noise": {"type": "symmetric", "rate": 0.3, "seed": 0}},
                  "method": {"name": method, "ldlva": {"mode": mode, "k": 8}, "scn": {"beta": 0.7}}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        return folder, {"dataset": "synthetic", "method": method, "seed": seed,
                        "noise": {"type": "symmetric", "rate": 0.3, "seed": 0}}

    summaries = dict([run("ce-fast-0", "ce", "fast", 0), run("ce-faithful-0", "ce", "faithful", 0),
                      run("ce-fast-1", "ce", "fast", 1), run("ce-faithful-1", "ce", "faithful", 1),
                      run("ldlva-fast-0", "ldlva", "fast", 0), run("ldlva-fast-1", "ldlva", "fast", 1),
                      run("ldlva-faithful-0", "ldlva", "faithful", 0),
                      run("scn-narrow-0", "scn", "fast", 0, width=8), run("scn-0", "scn", "fast", 0)])
    groups, repeats = group_runs(sorted(summaries), summaries)
    names = {key.method: sorted(r.name for r in runs) for key, runs in groups.items()}
    assert names == {"ce": ["ce-faithful-0", "ce-faithful-1"],   # the first of each repeat is kept
                     "ldlva [mode=fast]": ["ldlva-fast-0", "ldlva-fast-1"],
                     "ldlva [mode=faithful]": ["ldlva-faithful-0"],
                     "scn [model.width=16]": ["scn-0"], "scn [model.width=8]": ["scn-narrow-0"]}
    # rows in order, numbers by value (8 before 16)
    assert [key.method for key in groups] == ["ce", "ldlva [mode=faithful]", "ldlva [mode=fast]",
                                          "scn [model.width=8]", "scn [model.width=16]"]
    assert sorted(r.name for r in repeats) == ["ce-fast-0", "ce-fast-1"]

    # A run folder without its config.yaml cannot be told apart from its neighbours: an error
    # naming the file, not a row pooled on dataset and method alone.
    (tmp_path / "scn-0" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"scn-0/config\.yaml"):
        group_runs(sorted(summaries), summaries)


def test_cross_dataset_matrix(tmp_path):
    raf = formats.rafdb(tmp_path / "raf-basic", [1, 2, 3, 4, 5, 6, 7] * 12, [1, 2, 3, 4, 5, 6, 7] * 3, distribution=False)
    plan = {"image_size": 32,
            "overrides": ["optim.epochs=1", "model.width=8", "model.stem=small", "log.progress=false",
                          "log.wandb=disabled", "optim.batch_size=32"],
            "datasets": {"synthetic": {"overrides": ["data.synthetic.num_train=600", "data.synthetic.num_val=100",
                                                     "data.synthetic.num_test=120"]},
                         "rafdb": {"overrides": ["data.name=rafdb", f"data.root={raf}"]}}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    out = tmp_path / "cross"
    assert main(["cross", str(path), "--out", str(out)]) == 0
    result = json.loads((out / "cross.json").read_text())
    acc = np.array(result["accuracy"])
    assert result["datasets"] == ["synthetic", "rafdb"]
    assert acc.shape == (2, 2) and ((0 <= acc) & (acc <= 1)).all()
    assert result["mean_off_diagonal"] == pytest.approx((acc[0, 1] + acc[1, 0]) / 2, abs=1e-4)
    # the diagonal is each run's own test accuracy
    own = json.loads((out / "train-synthetic" / "summary.json").read_text())["final"]["test"]["accuracy"]
    assert acc[0, 0] == pytest.approx(own, abs=1e-4)
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "Cross-dataset" in (tmp_path / "report" / "report.md").read_text()


def test_bench_writes_its_sections_and_keeps_earlier_ones(tmp_path):
    # Structure only: the figures themselves are measured, never asserted.
    out = tmp_path / "results"
    assert main(["bench", "--out", str(out), "--sections", "knn,run", "--knn-sizes", "200,400",
                 "--rafdb", "256", "--run-epochs", "1"]) == 0
    path, = out.glob("bench-*-cpu.json")
    first = json.loads(path.read_text())
    assert first["machine"] and set(first["section_time"]) == {"knn", "run"}
    rows = {(r["backend"], r["n"], r["dim"]) for r in first["knn"]}
    assert {("kdtree", 400, 2), ("torch", 400, 512), ("faiss-cpu", 200, 512)} <= rows
    assert not any(backend == "kdtree" and dim == 512 for backend, _, dim in rows)
    run = first["run"]
    assert (run["train_images"], run["test_images"], run["epochs"]) == (256, 64, 1) and run["wall_s"] > run["train_s"]
    assert main(["bench", "--out", str(out), "--sections", "knn", "--knn-sizes", "200"]) == 0
    second = json.loads(path.read_text())
    assert second["run"] == run and {r["n"] for r in second["knn"]} == {200}
