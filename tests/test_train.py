import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny
from ldl.cli import main
from ldl.config import load_config
from ldl.models import build_model
from ldl.train import run_training


def test_tiny_run_beats_chance_and_writes_its_records(tmp_path):
    summary = run_training(load_config(None, tiny(tmp_path / "run", "optim.epochs=5")))
    run = Path(summary["run_dir"])
    test = summary["final"]["test"]
    majority = 0.33 + 0.05  # the largest class prior is 0.33
    assert test["accuracy"] > majority, test
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "samples.csv"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["packages"] and "commit" in meta["git"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3, 4, 5]
    assert {"kl", "chebyshev", "clark", "canberra", "cosine", "intersection", "ece", "macro_f1"} <= set(test)
    assert summary["ceiling"]["test"]["bayes_accuracy"] > test["accuracy"]


def test_same_seed_same_numbers_on_cpu(tmp_path):
    a = run_training(load_config(None, tiny(tmp_path / "a", "optim.epochs=1")))
    b = run_training(load_config(None, tiny(tmp_path / "b", "optim.epochs=1")))
    assert a["final"]["test"] == b["final"]["test"]


TIMINGS = ("epoch_time", "train_images_per_s", "eval_time")


def _metrics(run: Path) -> list[dict]:
    """Every per-epoch number but the wall-clock timings."""
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    args = tiny(tmp_path / "x", "optim.epochs=4")
    straight = tmp_path / "straight"
    run_training(load_config(None, [a for a in args if not a.startswith("run.dir")] + [f"run.dir={straight}"]))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ldl.cli", "train", *[a for a in args if not a.startswith("run.dir")],
           f"run.dir={killed}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 1:
            proc.send_signal(signal.SIGKILL)  # a hard kill during epoch 2
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = len(metrics.read_text().splitlines())
    assert done < 4
    assert main(["train", "--resume", str(killed)]) == 0
    assert _metrics(killed) == _metrics(straight)
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert a["final"]["test"]["accuracy"] == b["final"]["test"]["accuracy"]
    assert a["final"]["test"]["confusion_matrix"] == b["final"]["test"]["confusion_matrix"]


def test_eval_command_reproduces_the_final_test_metrics(tmp_path, capsys):
    summary = run_training(load_config(None, tiny(tmp_path / "r", "optim.epochs=1")))
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "r" / "checkpoint.pt"), "--split", "test", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == summary["final"]["test"]["accuracy"]
    assert metrics["kl"] == pytest.approx(summary["final"]["test"]["kl"])


def test_pretrained_weights_from_a_local_file(tmp_path):
    source = build_model("resnet18", 8, width=8, stem="small")
    path = tmp_path / "weights.pth"
    torch.save(source.backbone.state_dict(), path)   # torchvision-style keys
    loaded = build_model("resnet18", 8, width=8, stem="small", pretrained=str(path))
    assert torch.equal(loaded.backbone.conv1.weight, source.backbone.conv1.weight)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("resnet18", 8, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="does not match"):
        build_model("resnet18", 8, width=16, stem="small", pretrained=str(path))


def test_wandb_offline_writes_a_real_offline_run(tmp_path):
    pytest.importorskip("wandb")
    run_training(load_config(None, tiny(tmp_path / "w", "optim.epochs=1", "log.wandb=offline")))
    assert list((tmp_path / "w" / "wandb").glob("offline-run-*")), "wandb wrote no offline run"


def test_cli_reports_config_errors(capsys):
    assert main(["train", "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().out


def test_atomic_checkpoint_survives_a_crash_mid_write(tmp_path, monkeypatch):
    from ldl import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic({"epoch": 1, "config": {}, "model": {}}, path)   # load checks an ldl checkpoint's keys

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_the_ldl_command_is_installed():
    """Fails when the install step was skipped (running from the repo root would still import ldl)."""
    import shutil
    assert shutil.which("ldl"), "the `ldl` console script is not installed: pip install -e ."
    result = subprocess.run(["ldl", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "sweep" in result.stdout


def test_without_a_validation_split_no_epoch_is_selected_on_test(tmp_path):
    summary = run_training(load_config(None, tiny(tmp_path / "r", "optim.epochs=2", "eval.splits=[test]")))
    assert summary["best_val"]["epoch"] is None and "test" not in summary["best_val"]
    assert not (tmp_path / "r" / "best.pt").exists()
    assert summary["final"]["test"]["accuracy"] >= 0
