"""Issue 15: the methods as their authors run them (fixes, recipes, fractional schedules, the
paper protocol, the scoring pass and the per-epoch memorisation record)."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny
from ldl import checkpoint
from ldl.config import ConfigError, load_config
from ldl.data.augment import BatchAugment
from ldl.data.dataset import BatchLoader, FERData
from ldl.engine import training_fit
from ldl.methods.base import MethodContext
from ldl.methods.ldlva import LDLVA, RowSparseSGD, balanced_class_weights, discriminative_loss
from ldl.models import build_model
from ldl.optim import build_scheduler
from ldl.schedule import to_epochs
from ldl.train import Job, run_training


def test_ldlva_discriminative_gradient_matches_the_reference_normalisation():
    # B = 2 batch rows, K = 2 neighbours each, D = 2.  The public code sums l_j ||f_j - c_y||^2 / 2
    # over the batch and its neighbours and divides by B (1 + K) = 6; only batch rows get gradient:
    # d/df_i = l_i (f_i - c_{y_i}) / 6.  The old code divided the batch rows' sum by B = 2 (3x here;
    # 9x at K = 8).
    feats = torch.tensor([[1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    weight = torch.tensor([0.5, 0.8])
    centres = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    neighbour_feats = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [1.0, 0.0]]])
    neighbour_labels = torch.tensor([[0, 1], [1, 0]])
    neighbour_weight = torch.tensor([[1.0, 0.5], [0.25, 1.0]])
    loss = discriminative_loss(feats, labels, weight, neighbour_feats, neighbour_labels, neighbour_weight, centres)
    batch_sq = 0.5 * (1 + 4) + 0.8 * (1 + 4)                    # l_i ||f_i - c_{y_i}||^2
    neighbour_sq = 1.0 * 1 + 0.5 * 2 + 0.25 * 2 + 1.0 * 1        # l_k ||f_k - c_{y_k}||^2
    assert loss.item() == pytest.approx(0.5 * (batch_sq + neighbour_sq) / 6)
    loss.backward()
    expected = torch.tensor([[0.5 * 1, 0.5 * 2], [0.8 * -1, 0.8 * -2]]) / 6
    assert torch.allclose(feats.grad, expected)


def test_lambda_momentum_moves_only_the_rows_of_the_batch():
    # TF's sparse momentum update leaves unvisited rows alone; torch's dense SGD keeps moving them.
    theta = torch.nn.Parameter(torch.zeros(4))
    optimizer = RowSparseSGD([theta], lr=10.0, momentum=0.9)
    theta.grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
    optimizer.step()
    theta.grad = torch.tensor([0.0, 0.0, 2.0, 0.0])
    optimizer.step()
    assert theta.detach().tolist() == pytest.approx([-10.0, 0.0, -20.0, 0.0])
    theta.grad = torch.tensor([1.0, 0.0, 0.0, 0.0])
    optimizer.step()                                       # row 0: buffer 0.9 * 1 + 1 = 1.9
    assert theta.detach().tolist() == pytest.approx([-10.0 - 19.0, 0.0, -20.0, 0.0])


def test_balanced_class_weights_by_hand():
    labels = np.array([0, 0, 0, 1, 2, 2])                 # N = 6, C = 3 present of 4
    assert balanced_class_weights(labels, 4).tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6, 0.0])


def test_affectnet_ldlva_config_follows_the_public_code():
    cfg = load_config("experiments/affectnet/ldlva8.yaml")
    ldlva = cfg.method.ldlva
    assert ldlva.init_logit == 0.8 and 1 / (1 + math.exp(-ldlva.init_logit)) == pytest.approx(0.69, abs=0.005)
    assert ldlva.lambda_momentum == 0.9 and ldlva.class_weights is True and ldlva.similarity == "l1"
    assert cfg.optim.lr == 3e-4 and cfg.optim.batch_size == 32 and list(cfg.optim.milestones) == ["5/60", "10/60", "20/60"]


@pytest.mark.parametrize("value, epochs", [(9, 9.0), (2.5, 2.5), ("9/70", 9 / 70 * 20), ("17.5%", 3.5)])
def test_schedule_values_in_epochs_or_fractions(value, epochs):
    assert to_epochs(value, 20) == pytest.approx(epochs)


def test_fractions_are_accepted_only_for_schedule_keys():
    cfg = load_config(None, ["method.scn.relabel_start=9/70", "method.slm_aea.beta=17.5%"])
    assert cfg.method.scn.relabel_start == "9/70"
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=1/2"])


def test_paper_protocol_applies_the_recipe_and_overrides_still_win():
    shared = load_config("experiments/synthetic/base.yaml", ["method.name=rul"])
    paper = load_config("experiments/synthetic/base.yaml", ["method.name=rul", "protocol=paper"])
    assert shared.optim.lr == 0.002 and shared.optim.lr_mult.classifier == 1.0
    assert paper.optim.lr == 2e-4 and paper.optim.lr_mult.classifier == 10.0 and paper.optim.batch_size == 64
    assert paper.optim.schedule == "exponential" and paper.data.augment.erase_p == 0.5
    assert paper.data.image_size == shared.data.image_size and paper.optim.epochs == shared.optim.epochs
    ablated = load_config("experiments/synthetic/base.yaml", ["method.name=eac", "protocol=paper", "method.eac.lam=1"])
    assert ablated.method.eac.lam == 1 and ablated.optim.batch_size == 32 and ablated.data.augment.flip is False
    with pytest.raises(ConfigError, match="protocol"):
        load_config(None, ["protocol=mine"])


def test_rul_trains_its_classifier_at_ten_times_the_backbone_rate(tmp_path):
    from ldl.data import build_splits
    cfg = load_config(None, tiny(tmp_path / "r", "method.name=rul", "protocol=paper", "data.synthetic.num_train=200"))
    job = Job(cfg, build_splits(cfg, ("train",)))
    lrs = {g["name"]: g["lr"] for g in job.optimizer.param_groups}
    base = cfg.optim.lr   # tiny() overrides the recipe's 2e-4: an override wins
    assert lrs == {"backbone": pytest.approx(base), "classifier": pytest.approx(10 * base), "method": pytest.approx(base)}
    classifier = {id(p) for g in job.optimizer.param_groups if g["name"] == "classifier" for p in g["params"]}
    assert classifier == {id(p) for p in job.method.classifier.parameters()}


def test_exponential_schedule_keeps_the_papers_total_decay():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = OmegaConf.create({"optim": {"epochs": 7, "warmup_epochs": 0, "schedule": "exponential", "exp_gamma": 0.9,
                                      "exp_epochs": 70, "min_lr_ratio": 0.0, "milestones": [], "step_gamma": 0.1}})
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10)
    for _ in range(70):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.9 ** 70)   # 7 epochs decay as much as 70


def test_step_schedule_milestones_as_fractions():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    cfg = OmegaConf.create({"optim": {"epochs": 6, "warmup_epochs": 0, "schedule": "step", "exp_gamma": 0.9,
                                      "exp_epochs": None, "min_lr_ratio": 0.0, "milestones": ["10/60", "20/60"],
                                      "step_gamma": 0.1}})
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=1)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 0.1, 0.01, 0.01, 0.01, 0.01])


def test_eac_erases_the_image_and_its_mirror_independently():
    images = np.random.default_rng(0).integers(0, 255, (16, 24, 24, 3), dtype=np.uint8)
    data = FERData(images=images, labels=np.zeros(16, dtype=np.int64), num_classes=4, names=np.arange(16).astype(str))
    cpu = torch.device("cpu")

    def first_batch(erase_p: float) -> dict:
        augment = BatchAugment(flip=False, pad_crop=0, erase_p=erase_p)
        return next(iter(BatchLoader(data, 16, cpu, train=True, augment=augment, flip_view=True)))

    clean = first_batch(0.0)
    assert torch.equal(clean["image_flipped"], clean["image"].flip(-1))
    erased = first_batch(1.0)
    differs = (erased["image_flipped"] != erased["image"].flip(-1)).flatten(1).any(1)
    assert differs.all()


@pytest.mark.parametrize("start, relabels", [("1/2", True), ("100%", False)])
def test_scn_relabels_from_a_fraction_of_training(tmp_path, start, relabels):
    # A 1-epoch run: relabelling starts half-way through it (1/2), or never (100 %).
    run_training(load_config(None, tiny(tmp_path / "r", "method.name=scn", "optim.epochs=1",
                                        f"method.scn.relabel_start={start}", "data.synthetic.num_train=300")))
    state = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    train_labels = [int(r["label"]) for r in csv.DictReader(open(tmp_path / "r" / "samples.csv"))]
    assert (state["method"]["labels"].numpy().tolist() != train_labels) == relabels
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["schedules"]["method.scn.relabel_start"] == {"given": start, "epochs": 0.5 if relabels else 1.0}


def test_training_fit_by_hand():
    # 4 samples, given labels [0, 1, 1, 2], clean [0, 1, 0, 1]: samples 2 and 3 are noisy.
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])
    fit = training_fit(probs, np.array([0, 1, 1, 2]), np.array([0, 1, 0, 1]), {"noise_score": np.array([0, 0, 1, 1])})
    assert fit["fit_noisy"] == 0.5 and fit["fit_clean"] == 1.0 and fit["recover_noisy"] == 0.5
    # small-loss 1 - p(given) = [0.1, 0.3, 0.4, 0.9]: both noisy samples rank above both clean ones
    assert fit["auroc_model_noise_score"] == 1.0 and fit["auroc_noise_score"] == 1.0


def test_noisy_run_records_memorisation_and_scores_in_eval_mode(tmp_path):
    summary = run_training(load_config(None, tiny(tmp_path / "r", "method.name=rul", "optim.epochs=2",
                                                  "data.noise.type=symmetric", "data.noise.rate=0.3",
                                                  "data.synthetic.num_train=400")))
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        assert {"fit_noisy", "fit_clean", "auroc_model_noise_score", "auroc_noise_score"} <= set(record["train_pass"])
    detection = summary["noise_detection"]
    assert "noise_score" in detection and "train_pass_noise_score" in detection
    assert "eval mode" in summary["noise_detection_scores"]
    rows = list(csv.DictReader(open(tmp_path / "r" / "samples.csv")))
    scoring, training = (np.array([float(r[k]) for r in rows]) for k in ("noise_score", "train_pass_noise_score"))
    assert not np.allclose(scoring, training)   # dropout and augmentation make the training pass differ
    assert records[-1]["train_pass"]["auroc_noise_score"] == pytest.approx(detection["noise_score"]["noise_auroc"])


def _ldlva_on_features(refresh_every):
    n = 64
    images = np.random.default_rng(1).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    data = FERData(images=images, labels=np.arange(n) % 4, num_classes=4, names=np.arange(n).astype(str))
    cfg = load_config(None, ["method.name=ldlva", "method.ldlva.space=features", "method.ldlva.k=3",
                             "method.ldlva.warmup_epochs=1", f"method.ldlva.refresh_every={refresh_every}"])
    model = build_model("resnet18", 4, width=8, stem="small")
    ctx = MethodContext(num_classes=4, num_train=n, feature_dim=model.feature_dim, epochs=4, steps_per_epoch=1,
                        batch_size=16, device=torch.device("cpu"), train_data=data)
    return LDLVA(cfg.method.ldlva, ctx), model, data


def test_feature_space_neighbours_are_searched_again_after_warmup_and_resume_keeps_them():
    method, model, data = _ldlva_on_features("null")
    method.on_train_start(model, data)
    before = method.neighbours.clone()
    torch.manual_seed(5)
    for p in model.parameters():          # training has moved the features
        p.data.normal_()
    method.on_epoch_start(model, 1)       # the end of the 1-epoch warm-up
    assert not torch.equal(method.neighbours, before)
    after_warmup = method.neighbours.clone()
    method.on_epoch_start(model, 2)       # no periodic refresh by default
    assert torch.equal(method.neighbours, after_warmup)
    restored, _, _ = _ldlva_on_features("null")
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.neighbours, after_warmup) and torch.equal(restored.similarity, method.similarity)


def test_periodic_neighbour_refresh():
    method, model, data = _ldlva_on_features(2)
    assert [epoch for epoch in range(5) if method.refreshes_at(epoch)] == [1, 2, 4]


def test_report_keeps_protocols_apart_and_draws_memorisation(tmp_path):
    from ldl.cli import main
    from ldl.sweep import expand
    overrides = [o for o in tiny(tmp_path / "unused", "optim.epochs=2", "data.synthetic.num_train=300", "model.width=8")
                 if not o.startswith("run.dir")]
    spec = {"method": "grid", "command": ["ldl", "train", *overrides, "${args_no_hyphens}"],
            "parameters": {"data.noise": {"values": [{"type": "symmetric", "rate": 0.3}]},
                           "protocol": {"values": ["shared", "paper"]}, "method.name": {"values": ["scn"]}}}
    runs = expand(spec)
    assert [r.run_id.rsplit("-", 1)[0] for r in runs] == ["symmetric_0.3-shared-scn", "symmetric_0.3-paper-scn"]
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(spec))
    assert main(["sweep", str(path), "--out", str(tmp_path / "sweep"), "--workers", "1"]) == 0
    assert main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    shared, paper = md.index("Protocol `shared`"), md.index("Protocol `paper`")
    row = "| synthetic | scn | symmetric 30% | 1 |"
    assert md.count(row) == 2 and shared < md.index(row) < paper < md.rindex(row)   # one row in each table
    last = json.loads((tmp_path / "sweep" / runs[1].run_id / "metrics.jsonl").read_text().splitlines()[-1])
    paper_row = md[md.rindex(row):].splitlines()[0]
    assert paper_row.endswith(f" | {last['train_pass']['fit_noisy']:.4f} |")   # the last epoch's noisy-label fit
    assert "Memorisation: synthetic, symmetric 30%, paper protocol" in md
    assert "Memorisation: synthetic, symmetric 30%, shared protocol" in md
    assert "Start: random weights." in md
