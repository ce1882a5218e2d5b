import math

import numpy as np
import pytest
import torch

from conftest import tiny
from ldl import checkpoint
from ldl.config import load_config
from ldl.data.dataset import FERData
from ldl.methods.base import MethodContext
from ldl.methods.ldlva import LDLVA, aggregate, local_similarity, target_distribution
from ldl.models import build_model
from ldl.neighbors import auto_backend, available_backends, knn
from ldl.train import run_training


def test_target_distribution_by_hand_on_three_samples():
    # Sample 0 (label 0) has neighbours 1 and 2 in VA; 3 classes.
    va = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 1.0]], dtype=np.float32)
    neighbours = np.array([[1, 2], [0, 2], [0, 1]])
    s = local_similarity(va, neighbours, "gaussian", delta=1.0)
    assert s[0].tolist() == pytest.approx([math.exp(-0.25), math.exp(-1.0)])
    s_l1 = local_similarity(va, neighbours, "l1", delta=0.5)
    assert s_l1[2].tolist() == pytest.approx([math.exp(-1 / 0.5), math.exp(-1.5 / 0.5)])
    p_neighbours = torch.tensor([[[0.2, 0.8, 0.0], [0.0, 0.5, 0.5]]])
    zeta = torch.tensor([[0.5, 1.0]])
    d = aggregate(p_neighbours, torch.tensor(s[:1], dtype=torch.float32), zeta)
    c1, c2 = 0.5 * math.exp(-0.25), 1.0 * math.exp(-1.0)      # contributions s * zeta
    expected = (c1 * np.array([0.2, 0.8, 0.0]) + c2 * np.array([0.0, 0.5, 0.5])) / (c1 + c2)
    assert d[0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    t = target_distribution(torch.tensor([0]), torch.tensor([0.7]), d)
    assert t[0].tolist() == pytest.approx((0.7 * np.array([1, 0, 0]) + 0.3 * expected).tolist(), abs=1e-6)
    assert float(t.sum()) == pytest.approx(1.0)


def test_label_weight_drops_where_neighbours_disagree():
    """One SGD step on theta: d loss / d l = -sum_c (onehot - d)_c log p_c.  With the prediction
    agreeing with the neighbours (class 1) rather than the label (class 0), l must fall."""
    theta = torch.zeros(1, requires_grad=True)
    logits = torch.log(torch.tensor([[0.1, 0.8, 0.1]]))
    d = torch.tensor([[0.05, 0.9, 0.05]])
    t = target_distribution(torch.tensor([0]), torch.sigmoid(theta), d)
    loss = -(t * torch.log_softmax(logits, 1)).sum()
    loss.backward()
    assert theta.grad.item() > 0           # gradient descent lowers theta, hence l = sigmoid(theta)
    # ... and the opposite when the prediction agrees with the label.
    theta.grad = None
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1]]))
    t = target_distribution(torch.tensor([0]), torch.sigmoid(theta), d)
    (-(t * torch.log_softmax(logits, 1)).sum()).backward()
    assert theta.grad.item() < 0


def test_neighbour_sets_agree_across_backends():
    rng = np.random.default_rng(0)
    for dim in (2, 64):
        points = rng.standard_normal((3000, dim)).astype(np.float32)
        points[10] = points[11]                       # an exact duplicate: ties broken by index
        results = {b: knn(points, 8, b, device="cpu") for b in available_backends()}
        assert {"faiss-cpu", "kdtree", "torch"} <= set(results)
        first = next(iter(results.values()))
        for backend, idx in results.items():
            assert np.array_equal(idx, first), backend
        assert not (first == np.arange(3000)[:, None]).any()  # self excluded
        assert first[10, 0] == 11 and first[11, 0] == 10
        brute = np.argsort(((points[:, None] - points[None]) ** 2).sum(-1) + np.eye(3000) * 1e9, axis=1, kind="stable")[:50, :8]
        assert np.array_equal(np.sort(first[:50], 1), np.sort(brute, 1))
    if not torch.cuda.is_available():
        assert auto_backend(2) == "kdtree" and auto_backend(512) == "faiss-cpu"


def test_uncertainty_is_learned_exported_and_resumed(tmp_path):
    args = tiny(tmp_path / "r", "method.name=ldlva", "data.noise.type=symmetric", "data.noise.rate=0.3",
                "optim.epochs=2")
    summary = run_training(load_config(None, args))
    state = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    theta = state["method"]["theta"]
    assert theta.shape == (1500,) and not torch.allclose(theta, torch.full_like(theta, 0.5))
    # Noisy samples end with lower label weight (higher uncertainty) than clean ones.
    assert summary["noise_detection"]["noise_score"]["noise_auroc"] > 0.6
    header = (tmp_path / "r" / "samples.csv").read_text().splitlines()[0].split(",")
    assert {"label_weight", "noise_score", "clean_label"} <= set(header)
    # Resume: a run continued for more epochs starts from the saved weights.
    from ldl.train import Job
    from ldl.data import build_splits
    cfg = load_config(None, args)
    job = Job(cfg, build_splits(cfg, ("train", "val", "test")))
    job.load_state(state)
    assert torch.equal(job.method.theta.detach(), theta)
    assert torch.equal(job.method.neighbours, state["method"]["neighbours"])


def test_pseudo_va_train_annotate_and_ldlva_on_a_dataset_without_va(tmp_path):
    import csv
    import formats
    from ldl.cli import main
    from ldl.va import concordance

    assert concordance(np.array([0.1, 0.5, -0.3]), np.array([0.1, 0.5, -0.3])) == pytest.approx(1.0)
    assert concordance(np.array([1.0, 2.0]), np.array([2.0, 3.0])) == pytest.approx(2 * 0.25 / (0.25 + 0.25 + 1))
    base = [o for o in tiny(tmp_path / "x", "optim.epochs=1", "data.synthetic.num_train=600", "model.width=8")
            if not o.startswith("run.dir")]
    assert main(["va", "train", str(tmp_path / "va"), *base]) == 0
    raf = formats.rafdb(tmp_path / "raf", [1, 2, 3, 4, 5, 6, 7] * 4, [1, 2, 3, 4, 5, 6, 7], distribution=False)
    target = ["data.name=rafdb", f"data.root={raf}", "data.num_classes=7", "log.progress=false", "data.val_fraction=0.25"]
    out = tmp_path / "raf_va.csv"
    assert main(["va", "annotate", str(tmp_path / "va"), "--out", str(out), *target]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 35 and all(abs(float(r["valence"])) <= 1 and abs(float(r["arousal"])) <= 1 for r in rows)
    summary = run_training(load_config(None, [*base, *target, "method.name=ldlva", f"data.va_file={out}",
                                              "optim.batch_size=8", "method.ldlva.k=4", f"run.dir={tmp_path / 'r'}"]))
    assert summary["method"] == "ldlva" and summary["dataset"] == "rafdb"


def test_warmup_keeps_one_hot_targets_and_frozen_weights(tmp_path):
    run_training(load_config(None, tiny(tmp_path / "r", "method.name=ldlva", "optim.epochs=1",
                                        "method.ldlva.warmup_epochs=1", "data.synthetic.num_train=600",
                                        "model.width=8")))
    theta = checkpoint.load(tmp_path / "r" / "checkpoint.pt")["method"]["theta"]
    assert torch.equal(theta, torch.full_like(theta, 0.5))


def test_faithful_neighbours_from_resident_images_match_the_memory_map():
    # On a GPU the loader's images are one resident uint8 tensor; the neighbours gathered from
    # it must be the very images the CPU path gathers from the memory map.
    rng = np.random.default_rng(0)
    n = 12
    data = FERData(images=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), labels=rng.integers(0, 3, n),
                   num_classes=3, names=np.arange(n).astype(str), va=rng.uniform(-1, 1, (n, 2)).astype(np.float32))
    cfg = load_config(None, ["method.name=ldlva", "method.ldlva.mode=faithful"]).method.ldlva
    model = build_model("resnet18", 3, width=8, stem="small")
    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.from_numpy(data.labels[:4]), "index": torch.arange(4)}
    losses = []
    for resident in (None, torch.from_numpy(data.images.copy())):
        torch.manual_seed(0)
        ctx = MethodContext(num_classes=3, num_train=n, feature_dim=model.feature_dim, epochs=1, steps_per_epoch=1,
                            batch_size=4, device=torch.device("cpu"), train_data=data, train_images=resident)
        method = LDLVA(cfg, ctx)
        method.on_train_start(model, data)
        losses.append(method.training_step(model, batch, 0).loss)
    assert torch.equal(losses[0], losses[1])
