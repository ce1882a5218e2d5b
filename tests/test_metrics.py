import math

import numpy as np
import pytest

from ldl.metrics import (auroc, classification_metrics, distribution_metrics, expected_calibration_error,
                         noise_detection_metrics)


def test_classification_metrics_by_hand():
    # 3 classes, 5 samples: targets 0 0 1 2 2; predictions 0 1 1 2 0.
    target = np.array([0, 0, 1, 2, 2])
    probs = np.array([[.8, .1, .1], [.3, .6, .1], [.2, .7, .1], [.1, .1, .8], [.5, .2, .3]])
    m = classification_metrics(target, probs, ece_bins=10)
    assert m["accuracy"] == pytest.approx(3 / 5)
    # per-class recall: 1/2, 1/1, 1/2 -> mean 2/3
    assert m["mean_class_accuracy"] == pytest.approx(2 / 3)
    # precision: c0 1/2, c1 1/2, c2 1/1; F1: c0 .5, c1 2*.5*1/1.5=2/3, c2 2*1*.5/1.5=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["nll"] == pytest.approx(-np.mean(np.log([.8, .3, .7, .8, .3])))


def test_ece_by_hand():
    # confidences .9 (correct) .9 (wrong) .6 (correct): bins (.8,.9] and (.5,.6] with 10 bins.
    target = np.array([0, 1, 0])
    probs = np.array([[.9, .1], [.9, .1], [.6, .4]])
    # bin .9: acc .5 conf .9 -> 2/3*.4 ; bin .6: acc 1 conf .6 -> 1/3*.4
    assert expected_calibration_error(target, probs, 10) == pytest.approx(2 / 3 * .4 + 1 / 3 * .4)


def test_distribution_metrics_by_hand():
    t = np.array([[0.5, 0.5, 0.0]])
    p = np.array([[0.25, 0.5, 0.25]])
    m = distribution_metrics(t, p)
    assert m["kl"] == pytest.approx(0.5 * math.log(2))
    assert m["chebyshev"] == pytest.approx(0.25)
    # Clark: sqrt((.25/.75)^2 + 0 + (.25/.25)^2)
    assert m["clark"] == pytest.approx(math.sqrt((1 / 3) ** 2 + 1))
    assert m["canberra"] == pytest.approx(1 / 3 + 0 + 1)
    assert m["cosine"] == pytest.approx(0.375 / (math.sqrt(0.5) * math.sqrt(0.375)))
    assert m["intersection"] == pytest.approx(0.75)


def test_identical_distributions_are_perfect():
    q = np.random.default_rng(0).dirichlet(np.ones(7), size=20)
    m = distribution_metrics(q, q)
    assert m["kl"] == pytest.approx(0, abs=1e-9) and m["intersection"] == pytest.approx(1)
    assert m["cosine"] == pytest.approx(1) and m["clark"] == pytest.approx(0, abs=1e-9)


def test_auroc_matches_sklearn_and_hand():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    score, label = rng.random(200).round(1), rng.random(200) < 0.3   # ties included
    assert auroc(score, label) == pytest.approx(sklearn.roc_auc_score(label, score))


def test_noise_precision_at_rate():
    m = noise_detection_metrics(np.array([.9, .8, .1, .7]), np.array([True, False, False, True]))
    assert m["noise_precision_at_rate"] == pytest.approx(0.5)  # top-2 = samples 0, 1
