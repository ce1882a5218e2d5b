"""torchrun with the gloo backend on CPU: 2 processes against 1."""
import json
import os
import subprocess
import sys

import pytest

from conftest import tiny
from ldl.cli import main


def torchrun(args, nproc):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ldl.cli", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("method", ["ce", "ldlva", "slm_aea"])   # ce: a method without state
def test_two_processes_keep_per_sample_state_consistent_and_gather_metrics(tmp_path, method):
    extra = [f"method.name={method}", "optim.epochs=2", "data.noise.type=symmetric", "data.noise.rate=0.3",
             "method.slm_aea.beta=1.0", "data.synthetic.num_train=800", "model.width=8"]
    torchrun(tiny(tmp_path / "ddp", *extra), nproc=2)
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["distributed"] == {"world_size": 2, "model_consistent": True, "method_state_consistent": True}
    # Evaluation gathered from both ranks equals evaluating the checkpoint in one process.
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "ddp" / "checkpoint.pt"), "--split", "test", "--out", str(out)]) == 0
    single_eval = json.loads(out.read_text())
    assert single_eval["accuracy"] == ddp["final"]["test"]["accuracy"]
    assert single_eval["confusion_matrix"] == ddp["final"]["test"]["confusion_matrix"]
    assert sum(map(sum, ddp["final"]["test"]["confusion_matrix"])) == 240   # every test image, once
    # The same run in one process: same data, same schedule, comparable result.
    torchrun(tiny(tmp_path / "one", *extra), nproc=1)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert one["distributed"] is None
    assert abs(one["final"]["test"]["accuracy"] - ddp["final"]["test"]["accuracy"]) < 0.15
    lines = (tmp_path / "ddp" / "samples.csv").read_text().splitlines()
    assert len(lines) == 801   # per-sample exports cover every training sample
