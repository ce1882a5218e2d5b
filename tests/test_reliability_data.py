"""Issue 16, the data and file-loading faults: each test is named after the fault it prevents."""
import os
import random
import re

import numpy as np
import pytest
import torch

from ldl import checkpoint
from ldl.config import load_config
from ldl.models import build_model


class RunsCode:
    """Unpickling this runs `touch marker` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path, marker, **entries):
    torch.save({**entries, "model": RunsCode(marker)}, path)
    return path


def refused(path):
    return pytest.raises(ValueError, match=re.escape(str(path)) + ".*refused")


def test_pickle_in_checkpoint_is_refused_by_eval_and_resume(tmp_path):
    from ldl.train import evaluate_checkpoint, run_training
    marker = tmp_path / "ran"
    (tmp_path / "run").mkdir()
    bad = malicious(tmp_path / "run" / "checkpoint.pt", marker, config={})
    with refused(bad):
        evaluate_checkpoint(bad)
    with refused(bad):
        run_training(load_config(None, []), resume_dir=tmp_path / "run")
    assert not marker.exists()


def test_pickle_in_pretrained_weights_is_refused(tmp_path):
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "weights.pt", marker)
    with refused(bad):
        build_model("resnet18", 7, width=8, stem="small", pretrained=str(bad))
    assert not marker.exists()


def test_pickle_in_va_regressor_is_refused(tmp_path):
    from ldl.va import annotate
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "va_regressor.pt", marker, head={}, config={})
    with refused(bad):
        annotate(tmp_path, load_config(None, []), tmp_path / "va.csv")
    assert not marker.exists()


def test_pickle_in_teacher_is_refused(tmp_path):
    from ldl.teacher import label_dataset
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "teacher.pt", marker, members=[], au_head={}, au_temperature=1.0, config={})
    with refused(bad):
        label_dataset(tmp_path, tmp_path / "out")
    assert not marker.exists()


def test_pickle_in_checkpoint_is_refused_but_our_own_loads(tmp_path):
    marker = tmp_path / "ran"
    bad = malicious(tmp_path / "bad.pt", marker, config={})
    with refused(bad):
        checkpoint.load(bad)
    assert not marker.exists()
    own = tmp_path / "checkpoint.pt"   # with numpy's RNG state, the one non-tensor our checkpoints hold
    checkpoint.save_atomic({"config": {"seed": 0}, "model": {"w": torch.ones(2)}, "rng": checkpoint.rng_state()}, own)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(checkpoint.load(own)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_empty_truncated_or_garbage_checkpoint_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    if content == "truncated":
        checkpoint.save_atomic({"config": {}, "model": {"w": torch.ones(1000)}}, path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a readable checkpoint"):
        checkpoint.load(path)
