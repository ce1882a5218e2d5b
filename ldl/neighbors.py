"""Exact k-nearest-neighbour search: FAISS GPU, faiss-cpu, or chunked torch matmul.

Every backend proposes a few extra candidates; these are re-ranked with float64 distances,
ties broken by index, and the query itself removed, so all backends return the same sets.
"""
from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("auto", "faiss-gpu", "faiss-cpu", "torch")
EXTRA_CANDIDATES = 4


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
    return out + ["torch"]


def _faiss_candidates(x: np.ndarray, m: int, gpu: bool) -> np.ndarray:
    faiss = _faiss()
    index = faiss.IndexFlatL2(x.shape[1])
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    return index.search(x, m)[1]


def _torch_candidates(x: np.ndarray, m: int, device: torch.device, chunk: int = 4096) -> np.ndarray:
    points = torch.from_numpy(x).to(device)
    sq = (points * points).sum(1)
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
        backend = available_backends()[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-NN backend {backend!r}; one of {BACKENDS}")
    m = min(len(x), k + 1 + EXTRA_CANDIDATES)
    if backend in ("faiss-gpu", "faiss-cpu"):
        if backend not in available_backends():
            raise RuntimeError(f"{backend} is not available here (available: {available_backends()})")
        cand = _faiss_candidates(x, m, gpu=backend == "faiss-gpu")
    else:
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cand = _torch_candidates(x, m, dev)
    return _rerank(x, cand, k)


def _rerank(x: np.ndarray, cand: np.ndarray, k: int) -> np.ndarray:
    diff = x[cand].astype(np.float64) - x[:, None].astype(np.float64)
    dist = (diff * diff).sum(-1)
    dist[cand == np.arange(len(x))[:, None]] = np.inf   # the query itself
    order = np.lexsort((cand, dist), axis=1)[:, :k]       # by distance, then by index
    return np.take_along_axis(cand, order, axis=1)
