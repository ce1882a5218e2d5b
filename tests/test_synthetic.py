import numpy as np
import pytest
from scipy.stats import norm

from ldl.data.synthetic import CLASS_PRIOR, VA_MEAN, VA_STD, SyntheticSpec, generate_split, posterior, task_ceiling


@pytest.fixture(scope="module")
def split():
    return generate_split(SyntheticSpec(image_size=32, seed=3), "train", 1500)


def test_same_seed_same_bytes_other_seed_differs():
    a = generate_split(SyntheticSpec(image_size=32, seed=5), "val", 200)
    b = generate_split(SyntheticSpec(image_size=32, seed=5), "val", 200)
    c = generate_split(SyntheticSpec(image_size=32, seed=6), "val", 200)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.dist, b.dist)
    assert not np.array_equal(a.images, c.images)


def test_splits_have_their_own_seed_streams():
    val = generate_split(SyntheticSpec(image_size=32), "val", 50)
    test = generate_split(SyntheticSpec(image_size=32), "test", 50)
    assert not np.allclose(val.va, test.va)


def test_ground_truth_distributions_are_valid(split):
    assert split.dist.shape == (1500, 8)
    assert np.all(split.dist >= 0)
    assert np.allclose(split.dist.sum(1), 1, atol=1e-5)
    assert np.all(np.abs(split.va) <= 1)
    assert split.landmarks.shape == (1500, 68, 2)
    assert split.images.dtype == np.uint8 and split.images.shape == (1500, 32, 32, 3)


def test_posterior_is_bayes_rule_by_hand():
    a = np.array([[0.1, -0.2]])
    lik = []
    for c in range(8):
        box = np.prod(norm.cdf((1 - VA_MEAN[c]) / VA_STD[c]) - norm.cdf((-1 - VA_MEAN[c]) / VA_STD[c]))
        lik.append(CLASS_PRIOR[c] * np.prod(norm.pdf(a[0], VA_MEAN[c], VA_STD[c])) / box)
    expected = np.array(lik) / np.sum(lik)
    assert np.allclose(posterior(a)[0], expected, rtol=1e-6)


def test_observed_labels_are_drawn_from_the_truth(split):
    # Marginal label frequencies match the mean ground-truth distribution (1500 draws).
    freq = np.bincount(split.labels, minlength=8) / len(split)
    assert np.abs(freq - split.dist.mean(0)).max() < 0.04
    # Labels agree with the argmax of the truth about as often as the Bayes ceiling says.
    agree = (split.labels == split.dist.argmax(1)).mean()
    assert abs(agree - task_ceiling(split.dist)["bayes_accuracy"]) < 0.04


def test_ceiling_is_ambiguous_but_learnable(split):
    ceiling = task_ceiling(split.dist)
    assert 0.7 < ceiling["bayes_accuracy"] < 0.95  # ambiguity near class borders
    assert ceiling["nll_floor"] > 0.1


def test_seven_class_world_has_no_contempt():
    data = generate_split(SyntheticSpec(num_classes=7, image_size=32), "val", 300)
    assert data.dist.shape[1] == 7 and data.labels.max() <= 6
