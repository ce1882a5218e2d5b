"""Exact k-nearest-neighbour search: FAISS GPU, faiss-cpu, a KD-tree, or chunked torch matmul.

Every backend proposes a few extra candidates; these are re-ranked with float64 distances,
ties broken by index, and the query itself removed, so all backends return the same sets.

`auto` picks faiss-gpu, else torch on a GPU, else (on CPU) the KD-tree for low-dimensional
spaces such as valence-arousal, where it is O(N log N) instead of the others' O(N^2),
else faiss-cpu, else torch.
"""
from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("auto", "faiss-gpu", "faiss-cpu", "kdtree", "torch")
EXTRA_CANDIDATES = 4
KDTREE_MAX_DIM = 16  # beyond this a KD-tree degenerates towards brute force


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def available_backends() -> list[str]:
    faiss = _faiss()
    out = []
    if faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        out.append("faiss-gpu")
    if faiss is not None:
        out.append("faiss-cpu")
    return out + ["kdtree", "torch"]


def auto_backend(dim: int) -> str:
    available = available_backends()
    if "faiss-gpu" in available:
        return "faiss-gpu"
    if torch.cuda.is_available():
        return "torch"
    if dim <= KDTREE_MAX_DIM:
        return "kdtree"
    return "faiss-cpu" if "faiss-cpu" in available else "torch"


def _faiss_candidates(x: np.ndarray, m: int, gpu: bool) -> np.ndarray:
    faiss = _faiss()
    index = faiss.IndexFlatL2(x.shape[1])
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    return index.search(x, m)[1]


def _kdtree_candidates(x: np.ndarray, m: int) -> np.ndarray:
    from scipy.spatial import cKDTree
    points = x.astype(np.float64)
    return cKDTree(points).query(points, k=m, workers=-1)[1]


def _torch_candidates(x: np.ndarray, m: int, device: torch.device) -> np.ndarray:
    points = torch.from_numpy(x).to(device)
    sq = (points * points).sum(1)
    # Query rows per chunk so that one [chunk, N] float32 distance block is ~1 GiB (4 GiB on a GPU).
    chunk = max(1, (2 ** 32 if device.type == "cuda" else 2 ** 30) // (4 * len(x)))
    out = torch.empty((len(x), m), dtype=torch.long)
    for start in range(0, len(x), chunk):
        q = points[start:start + chunk]
        dist = sq[start:start + chunk, None] - 2 * q @ points.T + sq[None]
        out[start:start + chunk] = dist.topk(m, dim=1, largest=False).indices.cpu()
    return out.numpy()


def knn(points: np.ndarray, k: int, backend: str = "auto", device: str | torch.device | None = None) -> np.ndarray:
    """Indices [N, k] of each point's k nearest other points (exact L2, self excluded)."""
    x = np.ascontiguousarray(points, dtype=np.float32)
    if x.ndim != 2 or len(x) <= k:
        raise ValueError(f"k-NN needs more than k={k} points of shape [N, D], got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("k-NN points contain NaN or inf (samples without an auxiliary value?)")
    if backend == "auto":
        backend = auto_backend(x.shape[1])
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-NN backend {backend!r}; one of {BACKENDS}")
    m = min(len(x), k + 1 + EXTRA_CANDIDATES)
    if backend in ("faiss-gpu", "faiss-cpu"):
        if backend not in available_backends():
            raise RuntimeError(f"{backend} is not available here (available: {available_backends()})")
        cand = _faiss_candidates(x, m, gpu=backend == "faiss-gpu")
        dev = torch.device("cuda" if backend == "faiss-gpu" else "cpu")
    elif backend == "kdtree":
        cand, dev = _kdtree_candidates(x, m), torch.device("cpu")
    else:
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cand = _torch_candidates(x, m, dev)
    return _rerank(x, cand, k, dev)


def _rerank(x: np.ndarray, cand: np.ndarray, k: int, device: torch.device) -> np.ndarray:
    """Each row's k nearest candidates by float64 distance, ties broken by index, self removed;
    in chunks of ~256 MiB of float64 differences (on the GPU when the search ran there)."""
    points = torch.from_numpy(x).to(device, torch.float64)
    candidates = torch.from_numpy(np.ascontiguousarray(cand, dtype=np.int64)).to(device)
    out = torch.empty((len(x), k), dtype=torch.long)
    rows = max(1, 2 ** 28 // (8 * cand.shape[1] * x.shape[1]))
    for start in range(0, len(x), rows):
        c = candidates[start:start + rows]
        query = torch.arange(start, start + len(c), device=device)
        dist = ((points[c] - points[query, None]) ** 2).sum(-1)
        dist[c == query[:, None]] = float("inf")
        by_index = c.argsort(dim=1, stable=True)          # order by index, then stably by distance
        c, dist = c.gather(1, by_index), dist.gather(1, by_index)
        out[start:start + len(c)] = c.gather(1, dist.argsort(dim=1, stable=True)[:, :k]).cpu()
    return out.numpy()
