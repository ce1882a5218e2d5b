"""train_one_epoch / evaluate, in the manner of the DeiT and DINO engines.

The engine knows methods only through ldl.methods.base.Method: it asks for a step's loss,
steps the optimisers (AMP-aware), and hands evaluation logits to the metrics.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ldl.data.dataset import BatchLoader
from ldl.fairness import group_metrics
from ldl.methods.base import Method
from ldl.metrics import classification_metrics, distribution_metrics, noise_detection_metrics


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when enabled (Job.amp: the config's amp on CUDA, amp_cpu on CPU)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


SYNC_EVERY = 25


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def train_one_epoch(model: nn.Module, method: Method, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, epoch: int, device: torch.device,
                    amp: bool = True, grad_clip: float = 0.0, progress: bool = True) -> dict[str, float]:
    model.train(), method.train()
    loader.set_epoch(epoch)
    method.on_epoch_start(model, epoch)
    extra = method.extra_optimizers()
    # Sums stay on the device; the host syncs only every SYNC_EVERY steps (progress, NaN check).
    totals: dict[str, torch.Tensor] = {}
    seen, correct, start = 0, torch.zeros((), device=device), time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not (progress and _is_main()), unit="batch")
    for step, batch in enumerate(bar):
        method.step_in_epoch = step  # the clock of step-granular schedules (Method.progress)
        with autocast(device, amp):
            out = method.training_step(model, batch, epoch)
        optimizer.zero_grad(set_to_none=True)
        for opt in extra:
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        method.average_gradients()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        for opt in extra:
            opt.step()
        if scheduler is not None:
            scheduler.step()
        method.after_step(model, batch, out, epoch)
        method.synchronise(batch["index"])
        n = len(batch["label"])
        seen += n
        correct += (out.logits.detach().argmax(1) == batch["label"]).sum()
        for key, value in {"loss": out.loss, **out.logs}.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=device)
            totals[key] = totals.get(key, 0.0) + value * n
        if step % SYNC_EVERY == 0 or step == len(loader) - 1:
            loss = out.loss.item()
            if not math.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}, step {step}: loss is {loss}; lower optim.lr or check the data")
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    elapsed = time.perf_counter() - start
    keys = sorted(totals)
    packed = torch.stack([torch.tensor(float(seen), device=device), correct.float()] + [totals[k] for k in keys]).double()
    if dist.is_initialized() and dist.get_world_size() > 1:  # every rank's samples count
        dist.all_reduce(packed)
    seen, correct_total, *sums = packed.tolist()
    stats = {f"train_{k}": v / max(seen, 1) for k, v in zip(keys, sums)}
    stats.update(train_accuracy=correct_total / max(seen, 1), lr=optimizer.param_groups[0]["lr"],
                 epoch_time=elapsed, train_images_per_s=seen / max(elapsed, 1e-9))
    method.on_epoch_end(model, epoch)
    return stats


def _gather(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """Concatenate a tensor across ranks (equal shards), dropping the padding added by the loader."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    # Ranks hold interleaved shards (rank r: samples r, r+W, ...): restore the original order.
    return torch.stack(parts, 1).reshape(-1, *tensor.shape[1:])[:count]


@torch.no_grad()
def predict_logits(model: nn.Module, method: Method, loader: BatchLoader, device: torch.device,
                   amp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logits and sample indices over a whole split (gathered across ranks), in loader order."""
    model.eval(), method.eval()
    logits, index = [], []
    for batch in loader:
        with autocast(device, amp):
            logits.append(method.predict(model, batch["image"]).float())
        index.append(batch["index"])
    logits_t, index_t = torch.cat(logits), torch.cat(index)
    logits_t, index_t = _gather(logits_t, len(loader.data)), _gather(index_t, len(loader.data))
    return logits_t.cpu().numpy(), index_t.cpu().numpy()


@torch.no_grad()
def score_training_set(model: nn.Module, method: Method, loader: BatchLoader, device: torch.device,
                       amp: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The scoring pass: eval mode, un-augmented images (an eval loader over the training split).
    Softmax predictions [N, C] and the method's network scores (`Method.score`), in sample order."""
    model.eval(), method.eval()
    logits, index, scores = [], [], {}
    for batch in loader:
        with autocast(device, amp):
            batch_logits, batch_scores = method.score(model, batch["image"])
        logits.append(batch_logits.float())
        index.append(batch["index"])
        for key, value in batch_scores.items():
            scores.setdefault(key, []).append(value.float())
    count = len(loader.data)
    order = _gather(torch.cat(index), count).cpu().numpy().argsort()
    probs = torch.softmax(_gather(torch.cat(logits), count), 1).cpu().numpy()[order]
    return probs, {k: _gather(torch.cat(v), count).cpu().numpy()[order] for k, v in scores.items()}


def training_fit(probs: np.ndarray, labels: np.ndarray, clean_labels: np.ndarray | None,
                 scores: dict[str, np.ndarray]) -> dict[str, float]:
    """How the network fits its training labels: the fraction of samples predicted as their given
    label, separately for clean and noisy samples (memorisation: the noisy fit rising late in
    training), and the noise-detection AUROC of each score (the small-loss score 1 - p(given),
    and the method's own)."""
    pred = probs.argmax(1)
    fits_given = pred == labels
    out = {"fit_given": float(fits_given.mean())}
    if clean_labels is None:
        return out
    noisy = labels != clean_labels
    if noisy.all() or not noisy.any():
        return out
    out.update(fit_noisy=float(fits_given[noisy].mean()), fit_clean=float(fits_given[~noisy].mean()),
               recover_noisy=float((pred[noisy] == clean_labels[noisy]).mean()))
    small_loss = 1 - probs[np.arange(len(labels)), labels]
    for key, score in {"model_noise_score": small_loss, **scores}.items():
        out[f"auroc_{key}"] = noise_detection_metrics(np.asarray(score, dtype=float), noisy)["noise_auroc"]
    return out


def predict_probs(model: nn.Module, method: Method, loader: BatchLoader, device: torch.device,
                  amp: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax predictions and sample indices over a whole split, in loader order."""
    logits, index = predict_logits(model, method, loader, device, amp)
    return torch.softmax(torch.from_numpy(logits), 1).numpy(), index


def evaluate(model: nn.Module, method: Method, loader: BatchLoader, device: torch.device,
             amp: bool = True, ece_bins: int = 15) -> dict:
    """Accuracy, mean per-class accuracy, macro-F1, confusion matrix, ECE, NLL; the six LDL
    measures when the split has ground-truth distributions; per-group metrics and gaps under
    "groups" when it has demographic attributes."""
    probs, index = predict_probs(model, method, loader, device, amp)
    data = loader.data
    metrics = classification_metrics(data.labels[index], probs, ece_bins)
    dist = None if data.dist is None else data.dist[index][:, : probs.shape[1]]
    if data.subset is not None:  # AffectNet+-style subsets: 0 easy, 1 challenging, 2 difficult
        correct = probs.argmax(1) == data.labels[index]
        subset = data.subset[index]
        for s, name in enumerate(("easy", "challenging", "difficult")):
            if (subset == s).any():
                metrics[f"accuracy_{name}"] = float(correct[subset == s].mean())
    if dist is not None:
        metrics.update(distribution_metrics(dist, probs))
    if data.groups:
        metrics["groups"] = group_metrics(data.labels[index], probs, {k: v[index] for k, v in data.groups.items()},
                                          dist, ece_bins)
    return metrics
