"""The transfer measures of `ldl cross` (issue 21): the paper's Local / Global / Paired Similarity,
the label- and feature-space distances, the feature cache, and `ldl cross` end to end."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from scipy import linalg

import formats
from ldl import similarity as sim
from ldl.cli import main
from ldl.config import load_config
from ldl.data import build_splits
from ldl.data.cache import load_or_compute_arrays
from ldl.data.dataset import FERData
from ldl.data.rafdb import write_rafdb
from ldl.data.synthetic import SyntheticSpec, generate_split
from ldl.transfer import feature_statistics, settings

# Rows: trained on, columns: tested on.
M = np.array([[0.8, 0.4, 0.3],
              [0.5, 0.6, 0.2],
              [0.4, 0.3, 0.5]])


def test_paper_measures_on_a_hand_made_matrix():
    assert sim.local_similarity(M) == pytest.approx([0.8, 0.6, 0.5])
    # PS[i, j] = M[i, j] / M[j, j]: column 0 over 0.8, column 1 over 0.6, column 2 over 0.5
    assert sim.paired_similarity(M) == pytest.approx(np.array([[1.0, 0.4 / 0.6, 0.6],
                                                               [0.625, 1.0, 0.4],
                                                               [0.5, 0.5, 1.0]]))
    # GS(i): mean of the row's off-diagonal PS
    assert sim.global_similarity(M) == pytest.approx([(2 / 3 + 0.6) / 2, (0.625 + 0.4) / 2, 0.5])
    assert sim.transfer_drop(M) == pytest.approx(np.array([[0.0, 0.2, 0.2], [0.3, 0.0, 0.3], [0.4, 0.3, 0.0]]))
    # a target nobody can learn (in-domain 0) gets PS 0, as in the authors' code
    dead = M.copy()
    dead[2, 2] = 0
    assert sim.paired_similarity(dead)[:, 2] == pytest.approx([0, 0, 0])
    with pytest.raises(ValueError, match="two datasets"):
        sim.global_similarity(M[:1, :1])


def test_label_space_measures():
    assert sim.js_divergence(np.array([0.2, 0.8]), np.array([0.2, 0.8])) == pytest.approx(0)
    assert sim.js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1)
    # H(m) - (H(p) + H(q)) / 2 with m = (0.75, 0.25): 0.811278 - 0.5
    assert sim.js_divergence(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(0.311278, abs=1e-6)
    assert sim.class_prior(np.array([0, 0, 1, 2]), 4) == pytest.approx([0.5, 0.25, 0.25, 0])

    # Ambiguity profiles: the same per-class spread at different class rates is no divergence ...
    happy, sad = [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]
    a = np.array([happy] * 9 + [sad] * 1)
    b = np.array([happy] * 2 + [sad] * 8)
    assert sim.label_distribution_divergence(a, b) == pytest.approx(0, abs=1e-12)
    # ... a different spread of one class is, averaged over the shared modes (class 2 is a mode of c only)
    c = np.array([[0.6, 0.4, 0.0]] * 5 + [sad] * 5 + [[0.0, 0.0, 1.0]])
    expected = (sim.js_divergence(np.array(happy), np.array([0.6, 0.4, 0.0])) + 0) / 2
    assert sim.label_distribution_divergence(a, c) == pytest.approx(expected)
    assert np.isnan(sim.label_distribution_divergence(np.array([happy]), np.array([sad])))

    assert sim.mean_normalised_entropy(np.full((3, 4), 0.25)) == pytest.approx(1)
    assert sim.mean_normalised_entropy(np.eye(4)) == pytest.approx(0)
    assert sim.mean_normalised_entropy(np.array([[0.5, 0.5, 0, 0]])) == pytest.approx(0.5)   # log 2 / log 4

    assert sim.estimated_noise_rate(np.array([0.1, 0.6, 0.7, 0.2])) == pytest.approx(0.5)
    assert np.isnan(sim.estimated_noise_rate(np.array([0.1, 2.5])))   # -log confidence: not a probability


def test_frechet_distance_matches_the_gaussian_closed_form():
    # N(0, I) vs N(mu, 4 I) in 3-d: ||mu||^2 + 3 (1 + 4 - 2 * 2) = 9 + 3
    assert sim.frechet_distance(np.zeros(3), np.eye(3), np.array([1.0, 2.0, 2.0]), 4 * np.eye(3)) == pytest.approx(12)
    # non-commuting covariances: against scipy's matrix square root
    c1 = np.array([[2.0, 0.6], [0.6, 1.0]])
    c2 = np.array([[1.0, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([0.0, 1.0]), np.array([0.5, -1.0])
    ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(c1 + c2) - 2 * np.trace(linalg.sqrtm(c1 @ c2).real)
    assert sim.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)
    # estimated from samples, it approaches the closed form
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal(mu1, c1, 40_000)
    y = rng.multivariate_normal(mu2, c2, 40_000)
    est = sim.frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert est == pytest.approx(ref, rel=0.03)
    # a singular covariance (fewer images than dimensions) against itself is 0, with no offset
    few = rng.normal(size=(3, 6))
    cov = np.cov(few, rowvar=False)
    assert np.linalg.matrix_rank(cov) < 6
    assert sim.frechet_distance(few.mean(0), cov, few.mean(0), cov) == pytest.approx(0, abs=1e-6)


def test_mmd_statistic_and_permutation_test():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(6, 3)) + 0.4
    # the unbiased MMD^2 of Gretton et al. (2012, eq. 3), term by term, median-heuristic bandwidth
    pooled = np.concatenate([x, y])
    d2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    bw = np.median(d2[np.triu_indices(11, 1)])
    k = lambda a, b: np.exp(-((a - b) ** 2).sum() / bw)  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(a, b) for a in x for b in y) / 30
    stat, _ = sim.mmd_test(x, y, permutations=10)
    assert stat == pytest.approx(xx + yy - 2 * xy)

    same_a, same_b = rng.normal(size=(120, 5)), rng.normal(size=(120, 5))
    stat_same, p_same = sim.mmd_test(same_a, same_b, permutations=199)
    stat_shift, p_shift = sim.mmd_test(same_a, same_b + 1.0, permutations=199)
    assert p_same > 0.2 and p_shift == pytest.approx(1 / 200)   # the smallest p 199 permutations give
    assert stat_shift > 10 * abs(stat_same)


def test_spearman_of_pairs():
    rho, p, n = sim.spearman(np.array([1, 2, 3, np.nan]), np.array([10, 30, 20, 5]))
    assert (rho, n) == (pytest.approx(0.5), 3)
    assert np.isnan(sim.spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0]))[0])


def test_derived_arrays_are_cached_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"mean": np.arange(3.0)}

    key = {"dataset": "toy-features", "split": "train", "images": "abc"}
    first = load_or_compute_arrays(key, compute, tmp_path)
    again = load_or_compute_arrays(key, compute, tmp_path)
    assert len(calls) == 1 and again["mean"] == pytest.approx(first["mean"])
    load_or_compute_arrays({**key, "images": "abd"}, compute, tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("toy-features-train-*.npz"))) == 2


def test_feature_statistics_are_cached_by_image_content(tmp_path):
    cfg = load_config(None, [f"data.cache_dir={tmp_path}", "log.progress=false", "data.num_classes=7"])
    rng = np.random.default_rng(0)
    data = FERData(images=rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8), labels=np.zeros(40, dtype=np.int64),
                   num_classes=7, names=np.arange(40).astype(str))
    opts = settings({"backbone": {"width": 4}, "mmd_samples": 10})
    stats = feature_statistics(data, cfg, "train", opts)
    [entry] = tmp_path.glob("synthetic-features-train-*.npz")
    assert int(stats["count"]) == 40 and stats["sample"].shape == (10, 32) and stats["cov"].shape == (32, 32)
    written = entry.stat().st_mtime_ns
    assert feature_statistics(data, cfg, "train", opts)["mean"] == pytest.approx(stats["mean"])
    assert entry.stat().st_mtime_ns == written          # a hit: nothing recomputed or rewritten
    data.images[0, 0, 0, 0] ^= 1                         # one changed byte is another split
    feature_statistics(data, cfg, "train", opts)
    assert len(list(tmp_path.glob("synthetic-features-train-*.npz"))) == 2
    with pytest.raises(ValueError, match="unknown similarity key"):
        settings({"permutation": 10})


def test_rafdb_writer_round_trips_label_distributions(tmp_path):
    # the study's RAF-DB-format worlds carry their true distributions in distribution_basic.txt
    world = {split: generate_split(SyntheticSpec(num_classes=7, image_size=16, seed=3), split, n)
             for split, n in (("train", 35), ("test", 21))}
    write_rafdb(tmp_path / "raf", {s: (d.images, d.labels) for s, d in world.items()},
                distributions={s: d.dist for s, d in world.items()})
    cfg = load_config(None, ["data.name=rafdb", f"data.root={tmp_path / 'raf'}", "data.num_classes=7",
                             "data.image_size=16", "log.progress=false", f"data.cache_dir={tmp_path / 'cache'}"])
    test = build_splits(cfg, ("test",))["test"]
    assert (test.labels == world["test"].labels).all()
    assert test.dist == pytest.approx(world["test"].dist, abs=1e-5)


def test_cross_writes_the_measures_and_their_figures(tmp_path):
    raf = formats.rafdb(tmp_path / "raf-basic", [1, 2, 3, 4, 5, 6, 7] * 12, [1, 2, 3, 4, 5, 6, 7] * 4)
    syn = ["data.synthetic.num_train=160", "data.synthetic.num_val=40", "data.synthetic.num_test=70"]
    plan = {"image_size": 32,
            "overrides": ["optim.epochs=1", "model.width=8", "model.stem=small", "log.progress=false",
                          "log.wandb=disabled", "optim.batch_size=32", f"data.cache_dir={tmp_path / 'cache'}"],
            "datasets": {"synth-a": {"overrides": syn},
                         "synth-b": {"overrides": [*syn, "data.synthetic.seed=1"]},
                         "rafdb": {"overrides": ["data.name=rafdb", f"data.root={raf}", "method.name=slm_aea",
                                                 "data.noise.type=symmetric", "data.noise.rate=0.3"]}},
            "similarity": {"backbone": {"width": 8}, "mmd_samples": 60, "permutations": 99}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    out = tmp_path / "cross"
    assert main(["cross", str(path), "--out", str(out)]) == 0

    result = json.loads((out / "cross.json").read_text())
    # every table names how its models were trained: two methods, one protocol, random weights
    assert result["training"] == "ce, shared protocol, from random weights; slm_aea, shared protocol, from random weights"
    assert f"trained by {result['training']}" in (out / "cross.md").read_text()
    t = result["transfer"]
    f1 = np.array(result["macro_f1"])
    per = t["per_dataset"]
    assert [per[n]["local_similarity"] for n in result["datasets"]] == pytest.approx(np.diag(f1))
    assert np.array(t["pairs"]["paired_similarity"]) == pytest.approx(sim.paired_similarity(f1))
    assert [per[n]["global_similarity"] for n in result["datasets"]] == pytest.approx(sim.global_similarity(f1))
    for key in ("prior_js", "label_js", "frechet", "mmd", "mmd_p"):   # every set has label distributions
        assert np.isfinite(np.array(t["pairs"][key], dtype=float)).all(), key
    frechet = np.array(t["pairs"]["frechet"])
    # the RAF-DB files are noise images: far from both synthetic sets, which are near each other
    assert frechet[0, 2] > 10 * frechet[0, 1] and frechet[2, 0] > 10 * frechet[1, 0]
    assert np.array(t["pairs"]["mmd_p"])[0, 2] == pytest.approx(0.01)
    # injected noise is read back from the run; SLM-AEA's own score gives an estimate beside it
    assert per["rafdb"]["realised_noise_rate"] == pytest.approx(0.3, abs=0.02)
    assert per["rafdb"]["noise_score"] == "noise_score" and 0 <= per["rafdb"]["estimated_noise_rate"] <= 1
    assert per["synth-a"]["estimated_noise_rate"] is None   # CE exports no score of its own
    assert set(t["correlations"]) == {"prior_js", "label_js", "frechet", "mmd"}

    md = (out / "cross.md").read_text()
    pngs = sorted((out / "figures").glob("cross*.png"))
    sections = re.findall(r"### (.+)\n\n(.+)\n\n!\[", md)
    assert len(sections) == len(pngs) == 8          # matrix, 6 pair measures, drop scatter
    assert all(s.endswith(".") or s.endswith(")") for _, s in sections)   # one sentence under each
    page = (out / "cross.html").read_text()
    assert page.count("<img src='data:image/png;base64,") == len(pngs) and "Paired Similarity" in page
