import numpy as np
import pytest

from ldl.cli import main
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.dataset import FERData
from ldl.data.noise import PAIR_MAP, inject


def labels_only(labels, num_classes=8, dist=None):
    n = len(labels)
    return FERData(images=np.zeros((n, 2, 2, 3), np.uint8), labels=np.asarray(labels), num_classes=num_classes,
                   names=np.array([f"s{i}" for i in range(n)]), dist=dist)


def test_symmetric_exact_rate_never_same_class_seeded():
    data = labels_only(np.repeat(np.arange(8), 125))
    a, b = inject(data, "symmetric", 0.3, seed=1), inject(data, "symmetric", 0.3, seed=1)
    assert np.array_equal(a.labels, b.labels)
    flipped = a.labels != a.clean_labels
    assert flipped.sum() == 300 and a.info["noise"]["realised_rate"] == pytest.approx(0.3)
    assert np.array_equal(a.clean_labels, data.labels)
    t = np.array(a.info["noise"]["transition_matrix"])
    assert np.allclose(t.sum(1), 1) and np.all(np.diag(t) > 0.6)
    assert not np.array_equal(a.labels, inject(data, "symmetric", 0.3, seed=2).labels)


def test_asymmetric_follows_the_confusion_map():
    data = labels_only(np.repeat(np.arange(8), 50))
    noisy = inject(data, "asymmetric", 0.2, seed=0)
    moved = noisy.labels != noisy.clean_labels
    assert moved.sum() == 8 * 10
    for clean, new in zip(noisy.clean_labels[moved], noisy.labels[moved]):
        assert new == PAIR_MAP[clean]


def test_instance_noise_hits_ambiguous_samples():
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 7, n)
    confident = rng.random(n) < 0.5
    dist = np.full((n, 7), 0.0)
    dist[np.arange(n), labels] = np.where(confident, 0.98, 0.4)
    dist[np.arange(n), (labels + 1) % 7] += np.where(confident, 0.02, 0.6)
    noisy = inject(labels_only(labels, 7, dist.astype(np.float32)), "instance", 0.2, seed=0)
    moved = noisy.labels != noisy.clean_labels
    assert moved.sum() == 400
    assert moved[~confident].mean() > 5 * moved[confident].mean()
    assert np.all(noisy.labels[moved & ~confident] == (labels[moved & ~confident] + 1) % 7)


def test_rate_bounds():
    with pytest.raises(ValueError, match="within"):
        inject(labels_only([0, 1]), "symmetric", 0.6, seed=0)


def test_noise_only_touches_train_and_file_round_trip(tmp_path, capsys):
    base = ["data.image_size=32", "data.synthetic.num_train=300", "data.synthetic.num_val=50",
            "data.synthetic.num_test=50", "log.progress=false"]
    noisy = build_splits(load_config(None, base + ["data.noise.type=symmetric", "data.noise.rate=0.4"]))
    assert noisy["train"].info["noise"]["realised_rate"] == pytest.approx(0.4)
    assert noisy["test"].clean_labels is None
    out = tmp_path / "noisy.csv"
    assert main(["noise", "--type", "asymmetric", "--rate", "0.3", "--seed", "4", "--out", str(out), *base]) == 0
    again = build_splits(load_config(None, base + ["data.noise.type=file", f"data.noise.file={out}"]), ("train",))["train"]
    expected = inject(build_splits(load_config(None, base), ("train",))["train"], "asymmetric", 0.3, 4)
    assert np.array_equal(again.labels, expected.labels)
    assert np.array_equal(again.clean_labels, expected.clean_labels)
