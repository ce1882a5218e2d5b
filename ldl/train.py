"""The training job (DeiT's main.py): data, model, method, optimiser, epochs, records.

`run_training(cfg)` starts a run; `run_training(cfg, resume_dir=...)` continues one from its
latest checkpoint and ends with the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import csv
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from ldl import checkpoint
from ldl.checkpoint import CheckpointError
from ldl.config import config_from_dict
from ldl.data import BatchLoader, FERData, build_splits
from ldl.data.augment import BatchAugment
from ldl.data.groups import group_counts
from ldl.engine import evaluate, score_training_set, train_one_epoch, training_fit
from ldl.fairness import group_noise_detection
from ldl.methods.base import Method, MethodContext, build_method
from ldl.metrics import noise_detection_metrics
from ldl.models import FERNet, build_model
from ldl.optim import build_optimizer, build_scheduler
from ldl.rendezvous import from_slurm
from ldl.runlock import RunFolderError, RunLock
from ldl.schedule import schedule_table
from ldl.tracking import RunRecorder
from ldl.validate import check_checkpoint_fits, check_splits, check_steps, validate, validate_data

SCALAR_TYPES = (int, float)


def init_distributed() -> None:
    """Join the process group when launched by torchrun (even with one process, so that a 1-GPU
    torchrun exercises NCCL as a larger one does) or as one of several SLURM tasks (srun): NCCL on
    GPUs, gloo on CPUs.  The rendezvous comes from the environment (ldl/rendezvous.py)."""
    if "RANK" not in os.environ:  # torchrun's variables, where set, win over SLURM's
        os.environ.update(from_slurm(os.environ))
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_cuda_index())
        dist.init_process_group(backend)


def local_cuda_index() -> int:
    """This process's GPU among the visible ones: LOCAL_RANK, modulo the visible count, since
    SLURM's per-task binding (`srun --gpus-per-task 1`, `--gpu-bind`) shows each task only its own
    GPU as cuda:0 while SLURM_LOCALID still counts the node's tasks."""
    return int(os.environ.get("LOCAL_RANK", 0)) % max(torch.cuda.device_count(), 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available (use device=cpu)")
    if dist.is_initialized() and name == "cuda":
        return torch.device("cuda", local_cuda_index())
    return torch.device(name)


def seed_everything(cfg: DictConfig) -> None:
    """Seeds every generator.  Deterministic algorithms on CPU (`deterministic`), on CUDA only
    when `deterministic_cuda` asks: there they cost speed, and cuDNN autotunes instead."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    on_cuda = resolve_device(cfg.device).type == "cuda"
    if cfg.deterministic_cuda if on_cuda else cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif on_cuda:
        torch.backends.cudnn.benchmark = True


def make_run_dir(cfg: DictConfig) -> Path:
    if cfg.run.dir:
        return Path(cfg.run.dir)
    name = cfg.run.name or f"{cfg.data.name}-{cfg.method.name}-s{cfg.seed}"
    return Path(cfg.run.root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, SCALAR_TYPES) and not isinstance(v, bool)}


class Job:
    """Everything one run holds; built the same way for fresh, resumed and evaluation runs."""

    def __init__(self, cfg: DictConfig, splits: dict[str, FERData], num_train: int | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.splits = splits
        train = splits.get("train")
        self.num_classes = cfg.data.num_classes
        self.model: FERNet = build_model(cfg.model.arch, self.num_classes, cfg.model.width, cfg.model.stem,
                                         cfg.model.pretrained, cfg.model.input_size, cfg.model.neck).to(self.device)
        on_cuda = self.device.type == "cuda"
        self.amp = cfg.amp if on_cuda else cfg.amp_cpu
        self.channels_last = cfg.channels_last and on_cuda
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_loader = None
        if train is not None:
            a = cfg.data.augment
            per_rank_batch = cfg.optim.batch_size // self.world
            self.train_loader = BatchLoader(
                train, per_rank_batch, self.device, train=True, seed=cfg.seed,
                augment=BatchAugment(flip=a.flip, pad_crop=a.pad_crop, erase_p=a.erase_p),
                gpu_resident=cfg.data.gpu_resident, channels_last=self.channels_last,
                rank=self.rank, world_size=self.world)
        steps = len(self.train_loader) if self.train_loader is not None else 1
        self.num_train = len(train) if train is not None else num_train
        ctx = MethodContext(num_classes=self.num_classes, num_train=self.num_train,
                            feature_dim=self.model.feature_dim, epochs=cfg.optim.epochs, steps_per_epoch=steps,
                            batch_size=cfg.optim.batch_size, device=self.device,
                            feature_map_size=self._feature_map_size(cfg.data.image_size), train_data=train,
                            train_images=(self.train_loader.images if self.train_loader is not None
                                          and isinstance(self.train_loader.images, torch.Tensor) else None))
        self.method: Method = build_method(cfg, ctx)
        if self.train_loader is not None:
            self.train_loader.flip_view = self.method.flip_view
        self.optimizer = build_optimizer(cfg, self.model, self.method)
        self.scheduler = build_scheduler(cfg, self.optimizer, steps)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if on_cuda else None,
                find_unused_parameters=not self.method.uses_model_head)
        if cfg.compile:
            self.net = torch.compile(self.net)

    @torch.no_grad()
    def _feature_map_size(self, image_size: int) -> int:
        was_training = self.model.training
        self.model.eval()
        side = self.model.backbone(torch.zeros(1, 3, image_size, image_size, device=self.device)).shape[-1]
        self.model.train(was_training)
        return int(side)

    def eval_loader(self, split: str) -> BatchLoader:
        return BatchLoader(self.splits[split], self.cfg.optim.eval_batch_size, self.device, train=False,
                           gpu_resident=self.cfg.data.gpu_resident, channels_last=self.channels_last,
                           rank=self.rank, world_size=self.world)

    def state(self, epoch: int, history: list[dict], best: dict) -> dict[str, Any]:
        return {
            "epoch": epoch, "config": OmegaConf.to_container(self.cfg, resolve=True),
            "model": self.model.state_dict(), "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra_optimizers": [o.state_dict() for o in self.method.extra_optimizers()],
            "scheduler": self.scheduler.state_dict(), "history": history, "best": best,
            "rng": checkpoint.rng_state(), "num_train": self.num_train,
        }

    def load_state(self, state: dict[str, Any], weights_only: bool = False) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        if weights_only:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        for opt, opt_state in zip(self.method.extra_optimizers(), state["extra_optimizers"]):
            opt.load_state_dict(opt_state)
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])


DETECTION_NOTE = ("noise_score: the method's own score, from the scoring pass after training (eval mode, "
                  "un-augmented training images) where it comes from the network (SCN, RUL), else its learned "
                  "per-sample state (LDLVA 1 - l_i, SLM-AEA 1 - q_i(y_i)); model_noise_score: the small-loss "
                  "score 1 - p(given label) from the same pass; train_pass_noise_score: SCN's and RUL's score "
                  "as last seen in training (augmented, training mode). Reports use noise_score where present.")


def scoring_pass(job: Job, loader: BatchLoader) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Predictions on the un-augmented training set and the method's noise score: from the pass
    itself (SCN, RUL) or from its learned per-sample state (LDLVA, SLM-AEA)."""
    probs, scores = score_training_set(job.net, job.method, loader, job.device, job.amp)
    exports = job.method.sample_exports()
    if "noise_score" not in scores and "noise_score" in exports:
        scores["noise_score"] = exports["noise_score"]
    return probs, {**exports, **scores}


def wants_train_pass(cfg: DictConfig, train: FERData) -> bool:
    setting = cfg.eval.train_pass
    if setting == "auto":
        return train.clean_labels is not None and bool(train.is_noisy.any())
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"eval.train_pass must be auto, true or false, got {setting!r}")


def _export_samples(job: Job, path: Path, scored: tuple[np.ndarray, dict[str, np.ndarray]] | None) -> tuple[dict, dict | None]:
    """Per-training-sample CSV (label, clean label, the small-loss score and every method
    export) and the noise-detection scores of each 1-d score when clean labels exist, overall
    and within each demographic group.
    `scored`: the last epoch's scoring pass of the final weights, if one ran (else it runs here)."""
    train = job.splits["train"]
    probs, exports = scored or scoring_pass(job, job.eval_loader("train"))
    columns: dict[str, np.ndarray] = {"name": train.names, "label": train.labels}
    if train.clean_labels is not None:
        columns["clean_label"] = train.clean_labels
    columns["model_noise_score"] = 1 - probs[np.arange(len(train)), train.labels]
    for key, value in exports.items():
        if value.ndim == 1:
            columns[key] = value
        else:
            for c in range(value.shape[1]):
                columns[f"{key}_{c}"] = value[:, c]
    detection: dict[str, Any] = {}
    by_group = None
    if train.clean_labels is not None and train.is_noisy.any():
        for key in ("model_noise_score", "noise_score", "train_pass_noise_score"):
            if key in columns:
                detection[key] = noise_detection_metrics(np.asarray(columns[key], dtype=float), train.is_noisy)
        if train.groups:  # does a score find one group's wrong labels as well as another's?
            by_group = group_noise_detection({k: columns[k] for k in detection}, train.is_noisy, train.groups)
        if "mined_label" in columns:  # label recovery by methods that rewrite labels (SLM, SCN)
            recovered = columns["mined_label"] == train.clean_labels
            detection["label_recovery"] = {"accuracy": float(recovered.mean()),
                                           "accuracy_on_noisy": float(recovered[train.is_noisy].mean()),
                                           "given_label_accuracy": float((train.labels == train.clean_labels).mean())}
    if job.rank == 0:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(columns))
            for row in zip(*columns.values()):
                writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in row])
    return detection, by_group


@torch.no_grad()
def _check_consistency(job: Job) -> dict:
    """Under torchrun: do all ranks end with the same model and method state (per-sample
    uncertainty, mined labels, memory banks, BatchNorm statistics)?  Every tensor's sum and sum
    of squares (float64) are gathered from every rank and compared exactly."""
    def fingerprint(module: torch.nn.Module) -> torch.Tensor:
        values = [t.double() for t in module.state_dict().values() if t.is_floating_point() or t.dtype == torch.long]
        if not values:  # a method without state (CE)
            return torch.zeros(0, dtype=torch.float64, device=job.device)
        return torch.stack([torch.stack([v.sum(), (v * v).sum()]) for v in values]).flatten().to(job.device)

    result = {"world_size": job.world}
    for name, module in (("model", job.model), ("method_state", job.method)):
        local = fingerprint(module)
        every = [torch.empty_like(local) for _ in range(job.world)]
        dist.all_gather(every, local)
        result[f"{name}_consistent"] = all(torch.equal(every[0], other) for other in every[1:])
    return result


@contextmanager
def owned_run_dir(cfg: DictConfig) -> Iterator[Path]:
    """The run folder, named and locked by rank 0 for the whole run (one live process per
    folder).  Under torchrun every rank learns the name (timestamps may differ across ranks)
    and whether the lock was taken, so that all ranks stop together."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    run_dir = make_run_dir(cfg)
    lock, failure = RunLock(run_dir), None
    if rank == 0:
        try:
            lock.acquire()
        except RunFolderError as err:
            failure = err
    if dist.is_initialized():
        shared = [str(run_dir), str(failure) if failure else None]
        dist.broadcast_object_list(shared, src=0)
        run_dir, message = Path(shared[0]), shared[1]
        failure = failure or (RunFolderError(message) if message else None)
    if failure:
        raise failure
    try:
        yield run_dir
    finally:
        if rank == 0:
            lock.release()


def run_training(cfg: DictConfig | None, resume_dir: Path | None = None) -> dict[str, Any]:
    """A fresh run of `cfg`, or the run in `resume_dir` continued with its saved config."""
    state = None
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        state = checkpoint.load(resume_dir / "checkpoint.pt")
        cfg = config_from_dict(state["config"])
        cfg.run.dir = str(resume_dir)
    validate(cfg)
    with owned_run_dir(cfg) as run_dir:
        if state is None and (run_dir / "checkpoint.pt").exists():
            raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir}")
        return _train(cfg, run_dir, state)


def _train(cfg: DictConfig, run_dir: Path, state: dict[str, Any] | None) -> dict[str, Any]:
    seed_everything(cfg)
    splits = build_splits(cfg, tuple(dict.fromkeys(["train", *cfg.eval.splits])))
    check_splits(cfg, splits)
    world = dist.get_world_size() if dist.is_initialized() else 1
    check_steps(cfg.optim.batch_size, len(splits["train"]), world)
    job = Job(cfg, splits)
    recorder = RunRecorder(run_dir, cfg, resume=state is not None, active=job.rank == 0)
    history: list[dict] = []
    best: dict = {"epoch": None, "val_accuracy": -1.0}
    start_epoch = 0
    if state is not None:
        job.load_state(state)
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        recorder.rewrite_history(history)
    else:
        job.method.on_train_start(job.net, splits["train"])
    eval_loaders = {split: job.eval_loader(split) for split in cfg.eval.splits}
    train_pass_loader = job.eval_loader("train") if wants_train_pass(cfg, splits["train"]) else None

    def evaluate_splits() -> dict[str, dict]:
        return {split: evaluate(job.net, job.method, loader, job.device, job.amp, cfg.eval.ece_bins)
                for split, loader in eval_loaders.items()}
    train_start = time.perf_counter()
    epochs = cfg.optim.epochs
    last_eval: dict[str, dict] = {}
    scored = None   # the scoring pass of the latest weights, reused by the export
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(cfg.seed * 1000 + epoch)  # any in-method randomness replays on resume
        stats = train_one_epoch(job.net, job.method, job.train_loader, job.optimizer, job.scheduler, epoch,
                                job.device, job.amp, cfg.optim.grad_clip, cfg.log.progress)
        record: dict[str, Any] = {"epoch": epoch + 1, **stats}
        if train_pass_loader is not None:  # memorisation: fit of noisy vs clean training labels
            scored = probs, exports = scoring_pass(job, train_pass_loader)
            own = {"noise_score": exports["noise_score"]} if "noise_score" in exports else {}
            record["train_pass"] = training_fit(probs, splits["train"].labels, splits["train"].clean_labels, own)
        if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == epochs:
            eval_start = time.perf_counter()
            last_eval = evaluate_splits()
            record.update({split: _scalars(m) for split, m in last_eval.items()})
            record["eval_time"] = time.perf_counter() - eval_start
            val_acc = last_eval.get("val", {}).get("accuracy", -1.0)  # without a val split: no best epoch (never test)
            if val_acc > best["val_accuracy"]:
                best = {"epoch": epoch + 1, "val_accuracy": val_acc,
                        **{split: m for split, m in last_eval.items() if split != "val"}}
                if cfg.run.save_best and job.rank == 0:
                    checkpoint.save_atomic(job.state(epoch + 1, history + [record], best), run_dir / "best.pt")
        history.append(record)
        if job.rank == 0:
            checkpoint.save_atomic(job.state(epoch + 1, history, best), run_dir / "checkpoint.pt")
        recorder.log_epoch(record)
    if not last_eval:  # resumed a finished run: evaluate the final weights again
        last_eval = evaluate_splits()
    detection, group_detection = _export_samples(job, run_dir / "samples.csv", scored)
    distributed = _check_consistency(job) if job.world > 1 else None
    train = splits["train"]
    summary = {
        "run_dir": str(run_dir), "dataset": cfg.data.name, "method": cfg.method.name, "seed": int(cfg.seed),
        "protocol": cfg.protocol, "epochs": epochs, "schedules": schedule_table(cfg),
        "reported": "last epoch (final); best_val = epoch with the best validation accuracy",
        "final": {"epoch": epochs, **last_eval},
        "best_val": best,
        "train_time_s": time.perf_counter() - train_start,
        "noise": train.info.get("noise"), "noise_detection": detection,
        "noise_detection_scores": DETECTION_NOTE if detection else None,
        # per-group metrics are under final/best_val[split]["groups"]; here the groups' sizes and the training mix
        "groups": {"counts": {split: group_counts(d) for split, d in splits.items()}, "mix": train.info.get("group_mix"),
                   "noise_detection": group_detection} if train.groups else None,
        "ceiling": {split: d.info.get("ceiling") for split, d in splits.items() if d.info.get("ceiling")},
        "skipped_inputs": {split: d.info.get("skipped") for split, d in splits.items() if d.info.get("skipped")},
        "distributed": distributed,
    }
    recorder.finish(summary)
    return summary


def job_from_checkpoint(state: dict[str, Any], cfg: DictConfig, splits: dict[str, FERData]) -> Job:
    """A Job on `splits` holding a checkpoint's model and method state, for inference."""
    job = Job(cfg, splits, num_train=state["num_train"])
    try:
        job.load_state(state, weights_only=True)
    except RuntimeError as err:  # torch names the module, then each mismatch on a line of its own
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise CheckpointError(f"the checkpoint does not fit the {cfg.model.arch} / {cfg.method.name} model "
                              f"built from its config: {' '.join(lines[:2])}") from None
    return job


def evaluate_checkpoint(path: Path, split: str = "test", data_section: dict | None = None,
                        overrides: tuple[str, ...] = ()) -> tuple[dict, DictConfig, int]:
    """Metrics of a saved model on a split; `data_section` swaps in another dataset (cross-dataset
    evaluation), `overrides` are dotted keys applied on top.  Returns (metrics, config, epoch)."""
    state = checkpoint.load(Path(path))
    saved = state["config"]
    if data_section is not None:
        saved = {**saved, "data": {**data_section, "num_classes": saved["data"]["num_classes"]}}
    cfg = config_from_dict(saved, overrides)
    check_checkpoint_fits(path, config_from_dict(saved), cfg)
    validate_data(cfg)
    seed_everything(cfg)
    job = job_from_checkpoint(state, cfg, build_splits(cfg, (split,)))
    metrics = evaluate(job.net, job.method, job.eval_loader(split), job.device, job.amp, cfg.eval.ece_bins)
    return metrics, cfg, state["epoch"]
