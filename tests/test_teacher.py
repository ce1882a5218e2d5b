import json

import numpy as np
import pytest

from conftest import tiny
from ldl.cli import main
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.affectnet_plus import parse_record, write_record
from ldl.data.loading import ErrorPolicy
from ldl.teacher.au_proxy import geometry_features, normalise
from ldl.teacher.fusion import apply_platt, assign_subsets, fit_platt, fuse


def test_fusion_by_hand():
    # Two backbones' calibrated one-vs-rest probabilities for one sample, 3 classes.
    ovr = [np.array([[0.8, 0.3, 0.1]]), np.array([[0.6, 0.5, 0.1]])]
    au = np.array([[0.5, 0.25, 0.25]])
    ebc = np.array([0.7, 0.4, 0.1]) / 1.2
    expected = ebc ** 0.7 * au[0] ** 0.3
    expected /= expected.sum()
    assert fuse(ovr, au, 0.7, 0.3)[0] == pytest.approx(expected)
    assert fuse(ovr, None)[0] == pytest.approx(ebc)


def test_platt_calibration_recovers_a_known_slope():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20000, 2))
    # true P(y=c | z_c) = sigmoid(0.5 z_c - 1): draw labels accordingly (one-vs-rest, class 0 vs 1)
    p0 = 1 / (1 + np.exp(-(0.5 * z[:, 0] - 1)))
    labels = (rng.random(20000) > p0).astype(np.int64)       # label 0 with probability p0
    z[:, 1] = -z[:, 0]                                        # class 1 is the complement
    params = fit_platt(z, labels)
    assert params[0] == pytest.approx([0.5, -1.0], abs=0.06)
    assert apply_platt(np.array([[2.0, -2.0]]), params)[0, 0] == pytest.approx(0.5, abs=0.03)


def test_subset_rule_edge_cases():
    soft = np.array([[0.6, 0.4, 0.0],     # argmax = label, exactly easy_min -> easy
                     [0.59, 0.41, 0.0],   # argmax = label but below easy_min -> challenging
                     [0.4, 0.6, 0.0],     # label 0 at 0.4, not the argmax -> challenging
                     [0.2, 0.8, 0.0],     # exactly difficult_max -> challenging
                     [0.19, 0.81, 0.0],   # below difficult_max -> difficult
                     [0.34, 0.33, 0.33]])  # argmax but unsure -> challenging
    labels = np.zeros(6, dtype=np.int64)
    assert assign_subsets(soft, labels, 0.6, 0.2).tolist() == [0, 1, 1, 1, 2, 1]


def test_geometry_is_pose_invariant():
    rng = np.random.default_rng(0)
    pts = rng.normal(0, 1, (3, 68, 2))
    angle = 0.3
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 2.5 * pts @ rot.T + np.array([10.0, -4.0])
    assert np.allclose(normalise(pts), normalise(moved), atol=1e-9)
    assert np.allclose(geometry_features(pts), geometry_features(moved), atol=1e-5)


def test_json_written_then_read_back(tmp_path):
    soft = np.array([0.1, 0.5, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    meta = {"valence": 0.25, "arousal": -2, "landmark-68": list(map(float, range(136)))}
    write_record(tmp_path / "7.json", 1, soft, 2, meta)
    record = json.loads((tmp_path / "7.json").read_text())
    assert set(record) == {"human-label", "soft-label", "subset", "meta-data"}
    parsed = parse_record(record, "7.json", ErrorPolicy())
    assert parsed["label"] == 1 and parsed["subset"] == 2
    assert parsed["soft"] == pytest.approx(soft)
    assert parsed["va"][0] == 0.25 and np.isnan(parsed["va"][1])
    assert parsed["landmarks"].shape == (68, 2)


def test_teacher_train_label_and_student(tmp_path):
    base = tiny(tmp_path / "unused", "optim.epochs=1", "model.width=8", "teacher.au_epochs=50",
                "data.synthetic.num_train=600")
    base = [o for o in base if not o.startswith("run.dir")]
    noisy = ["data.noise.type=symmetric", "data.noise.rate=0.3"]   # the teacher learns from noisy labels
    assert main(["teacher", "train", str(tmp_path / "teacher"), *base, *noisy]) == 0
    assert main(["teacher", "label", str(tmp_path / "teacher"), "--out", str(tmp_path / "anp")]) == 0
    test_ann = sorted((tmp_path / "anp" / "human_annotated" / "validation_set" / "annotations").glob("*.json"))
    assert len(test_ann) == 240
    student = load_config(None, [*base, "data.name=affectnet_plus", f"data.root={tmp_path / 'anp'}",
                                 "method.name=distill", f"run.dir={tmp_path / 'student'}",
                                 "data.noise.type=file", f"data.noise.file={tmp_path / 'anp' / 'noise.csv'}"])
    splits = build_splits(student, ("train", "test"))
    # the records hold the clean labels, the noise file the very labels the teacher learnt from
    teacher_train = build_splits(load_config(None, [*base, *noisy]), ("train",))["train"]
    rows = {n: (lab, cl) for n, lab, cl in zip(splits["train"].names, splits["train"].labels, splits["train"].clean_labels)}
    taught = [rows.get(f"train_{i:06d}") for i in range(len(teacher_train))]
    kept = [i for i, r in enumerate(taught) if r is not None]    # the copy holds some out for validation again
    assert [taught[i] for i in kept] == [(teacher_train.labels[i], teacher_train.clean_labels[i]) for i in kept]
    assert splits["train"].info["noise"]["made_by"] == {"type": "symmetric", "rate": 0.3, "seed": 0,
                                                        "realised_rate": pytest.approx(0.3)}
    assert splits["train"].soft.shape[1] == 8 and set(np.unique(splits["test"].subset)) <= {0, 1, 2}
    original = build_splits(load_config(None, base), ("test",))["test"]
    assert np.array_equal(splits["test"].labels, original.labels)    # human labels round-trip
    assert np.allclose(splits["test"].dist, original.dist, atol=1e-5)   # and the world's truth (issue 19)
    from ldl.train import run_training
    summary = run_training(student)
    assert any(k.startswith("accuracy_") for k in summary["final"]["test"])   # per-subset evaluation
    from ldl.report import _noise
    kind, rate = _noise(summary)
    assert kind == "file (symmetric 30%)" and 0.2 < rate < 0.3   # the held-out val rows are clean


def test_distill_curriculum_and_subset_weights():
    import torch
    from omegaconf import OmegaConf
    from ldl.methods.base import MethodContext
    from ldl.methods.distill import Distill
    ctx = MethodContext(num_classes=3, num_train=4, feature_dim=2, epochs=5, steps_per_epoch=1, batch_size=4,
                        device=torch.device("cpu"))
    m = Distill(OmegaConf.create({"hard_weight": 0.0, "subset_weights": [1.0, 0.5, 0.25],
                                  "subset_start_epoch": [0, 2, 4]}), ctx)
    subset = torch.tensor([0, 1, 2, 1])
    assert m.subset_weights(subset, 0, 4, "cpu").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert m.subset_weights(subset, 2, 4, "cpu").tolist() == [1.0, 0.5, 0.0, 0.5]
    assert m.subset_weights(subset, 4, 4, "cpu").tolist() == [1.0, 0.5, 0.25, 0.5]
