"""Why a dataset transfers: difficulty and similarity measures for cross-dataset matrices.

Two families, both pure numpy / scipy:

* The three measures of Gaya-Morey, Manresa-Yee, Martinie and Buades-Rubio, "Evaluating Facial
  Expression Recognition Datasets for Deep Learning: A Benchmark Study with Novel Similarity
  Metrics" (arXiv:2503.20428, 2025), computed from a cross matrix M[i, j] = performance of the
  model trained on dataset i, tested on dataset j.  Their released code
  (github.com/Xavi3398/fer_benchmark, notebooks/"7 - Testing.ipynb") averages M over 5 folds and
  two architectures and uses macro-F1 as the performance; we take whatever matrix the caller
  gives (one run per dataset in `ldl cross`).
* Distances between two datasets that need no training: class priors, label distributions,
  pooled features of a fixed backbone, and the noise a trained method believes it saw.

Conventions: matrices are indexed [source (trained on), target (tested on)]; NaN marks a
measure that does not exist for a pair (e.g. no soft labels on one side).
"""
from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist, jensenshannon
from scipy.stats import spearmanr


# ---------------------------------------------------------------- the paper's three measures
def local_similarity(matrix: np.ndarray) -> np.ndarray:
    """Local Similarity LS(d) = M[d, d]: how hard a dataset is on itself (higher = easier).

    Source: arXiv:2503.20428 ("Local Similarity ... dataset difficulty"); in the released notebook
    the in-domain score M[d, d] is the denominator of the Paired Similarity, commented
    `# Difficulty(d)`, and its README's Local Similarity values (e.g. AffectNet 0.5622) are the
    in-domain macro-F1 averaged over folds and the two models."""
    return np.diag(np.asarray(matrix, dtype=float)).copy()


def paired_similarity(matrix: np.ndarray) -> np.ndarray:
    """Paired Similarity PS[i, j] = M[i, j] / M[j, j] (0 where M[j, j] = 0): the share of the
    target's own in-domain performance that a model trained on the source reaches on it.  The
    diagonal is 1; above 1, the source teaches the target's test set better than its own
    training set does.

    Source: arXiv:2503.20428, released notebook cell "Paired Similarity":
    `red_matrix[y, x] = a / b if b > 0 else 0` with a = M[train, test], b = M[test, test]."""
    m = np.asarray(matrix, dtype=float)
    own = np.diag(m)[None, :]
    return np.divide(m, own, out=np.zeros_like(m), where=own > 0)


def global_similarity(matrix: np.ndarray) -> np.ndarray:
    """Global Similarity GS(i) = mean over targets j != i of PS[i, j]: how well a model trained
    on dataset i generalises to the others, each relative to the target's own difficulty.

    Source: arXiv:2503.20428 ("Global Similarity ... generalization capability").
    Interpretation: the released notebook's Global Similarity cell could not be read in the
    stored copy (only its figure survives), so the averaging of the Paired Similarity over the
    other datasets is ours; the unnormalised mean off-diagonal M[i, j] of the same metric is
    reported beside it by `ldl cross` (transfer.per_dataset.<name>.mean_off_diagonal; the top
    level's `mean_off_diagonal_per_train` is of accuracy), so both readings are available."""
    ps = paired_similarity(matrix)
    n = len(ps)
    if n < 2:
        raise ValueError("Global Similarity needs at least two datasets")
    return (ps.sum(1) - np.diag(ps)) / (n - 1)


def transfer_drop(matrix: np.ndarray) -> np.ndarray:
    """drop[i, j] = M[j, j] - M[i, j]: what the target loses by training on the source instead
    of on itself (0 on the diagonal)."""
    m = np.asarray(matrix, dtype=float)
    return np.diag(m)[None, :] - m


# ---------------------------------------------------------------- label-space distances
def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1]: JS = KL(p||m)/2 + KL(q||m)/2, m = (p+q)/2
    (Lin 1991, IEEE Trans. Inf. Theory 37(1)).  scipy returns its square root, the JS distance."""
    return float(jensenshannon(p, q, base=2) ** 2)


def conditional_label_profile(dist: np.ndarray) -> dict[int, np.ndarray]:
    """Mean label distribution of the samples whose distribution peaks at class c, per c: the
    dataset's annotation-ambiguity profile (a soft confusion matrix).  Samples are grouped by
    their distribution's own mode, not by their hard label, so that label noise in the hard
    labels does not leak into this measure."""
    mode = dist.argmax(1)
    return {int(c): dist[mode == c].mean(0) for c in np.unique(mode)}


def label_distribution_divergence(dist_a: np.ndarray, dist_b: np.ndarray) -> float:
    """Mean over the classes both datasets have as a distribution mode of the JS divergence
    between their ambiguity profiles (conditional_label_profile): 0 when annotators of both
    sets spread each expression's votes the same way, whatever the class priors."""
    pa, pb = conditional_label_profile(dist_a), conditional_label_profile(dist_b)
    shared = sorted(set(pa) & set(pb))
    if not shared:
        return float("nan")
    return float(np.mean([js_divergence(pa[c], pb[c]) for c in shared]))


def mean_normalised_entropy(dist: np.ndarray) -> float:
    """Mean Shannon entropy of the label distributions divided by log C, in [0, 1]: 0 = every
    sample unambiguous, 1 = every sample uniform over the C classes."""
    d = np.asarray(dist, dtype=float)
    h = -np.where(d > 0, d * np.log(np.where(d > 0, d, 1)), 0).sum(1)
    return float(h.mean() / np.log(d.shape[1]))


def estimated_noise_rate(score: np.ndarray) -> float:
    """Share of training samples whose exported noise score exceeds 1/2: those the method holds
    more likely mislabelled than not (LDLVA 1 - l_i, SLM-AEA 1 - q_i(y_i), SCN 1 - alpha_i).
    Only for probability-like scores; NaN for scores outside [0, 1] (RUL's log uncertainty).
    It is the method's belief, not a calibrated estimate: on issue 15's runs (seed 0, 0 / 20 /
    40 % symmetric noise) SLM-AEA's share was 13 / 20 / 29 % and LDLVA's 5 / 12 / 6 %, though
    LDLVA's score ranks the noisy samples better (a two-component mixture on the scores, as
    DivideMix fits on losses, did no better: 13 / 21 / 20 % for LDLVA, 42 % for clean SLM-AEA)."""
    s = np.asarray(score, dtype=float)
    if s.size == 0 or s.min() < 0 or s.max() > 1:
        return float("nan")
    return float((s > 0.5).mean())


# ---------------------------------------------------------------- feature-space distances
def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2):
    ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))  (Dowson & Landau 1982; the FID of
    Heusel et al., NeurIPS 2017, on pooled features).  The trace of the root is taken as
    Tr((C1^(1/2) C2 C1^(1/2))^(1/2)), the same number through a symmetric PSD matrix, so singular
    covariances (fewer images than feature dimensions) need no offset."""
    diff = mu1 - mu2
    w, v = linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = linalg.eigvalsh(root1 @ cov2 @ root1)
    fd = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    return float(max(fd, 0.0))   # the root of near-zero eigenvalues can overshoot by ~1e-7


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 between samples x and y with a Gaussian kernel, and its permutation p-value.

    MMD^2_u of Gretton et al., "A Kernel Two-Sample Test", JMLR 13 (2012), eq. 3; kernel
    exp(-||x - y||^2 / m), m the median squared pairwise distance of the pooled sample: the median
    heuristic of ibid. section 8 up to its factor 2 (there exp(-d^2 / (2 sigma^2)), sigma the
    median distance; ours is a kernel sqrt(2) narrower; a bandwidth taken from the pooled sample
    leaves the permutation test exact); the
    p-value is (1 + #{permuted MMD^2 >= observed}) / (1 + permutations), the permutations
    relabelling the pooled sample into two groups of the original sizes."""
    pooled = np.concatenate([x, y]).astype(np.float64)
    n, total = len(x), len(pooled)
    sq = cdist(pooled, pooled, "sqeuclidean")
    median = np.median(sq[np.triu_indices(total, 1)])
    kernel = np.exp(-sq / max(median, 1e-12))
    np.fill_diagonal(kernel, 0)   # the U-statistic leaves out i = j terms
    rng = np.random.default_rng(seed)
    # Row 0: the observed split; each further row a random relabelling (1 = group x).
    groups = np.zeros((permutations + 1, total))
    groups[0, :n] = 1
    for p in range(1, permutations + 1):
        groups[p, rng.permutation(total)[:n]] = 1
    # One matrix product for all splits: with g the group-x indicator and 1 the ones vector,
    # g'Kg = within x, g'K1 - g'Kg = between, 1'K1 - within x - 2 between = within y.
    gk = groups @ kernel
    within_x = (gk * groups).sum(1)
    between = gk.sum(1) - within_x
    within_y = kernel.sum() - within_x - 2 * between
    m = total - n
    stats = within_x / (n * (n - 1)) + within_y / (m * (m - 1)) - 2 * between / (n * m)
    p_value = (1 + (stats[1:] >= stats[0]).sum()) / (1 + permutations)
    return float(stats[0]), float(p_value)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """Spearman's rank correlation of the pairs where both are finite: (rho, p-value, n);
    NaN rho and p with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan"), float("nan"), n
    rho, p = spearmanr(x[keep], y[keep])
    return float(rho), float(p), n
