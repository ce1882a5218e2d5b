import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny
from ldl import checkpoint
from ldl.config import load_config
from ldl.methods.eac import attention_consistency, class_activation_maps
from ldl.methods.label_smoothing import LabelSmoothing
from ldl.methods.rul import relative_mix
from ldl.methods.scn import rank_regularisation
from ldl.methods.slm_aea import initial_logits, mining_step, ramp_down, ramp_up
from ldl.train import run_training


def test_label_smoothing_target():
    from omegaconf import OmegaConf
    from ldl.methods.base import MethodContext
    ctx = MethodContext(num_classes=4, num_train=1, feature_dim=2, epochs=1, steps_per_epoch=1, batch_size=1,
                        device=torch.device("cpu"))
    t = LabelSmoothing(OmegaConf.create({"epsilon": 0.2}), ctx).smoothed_target(torch.tensor([2]))
    assert t[0].tolist() == pytest.approx([0.05, 0.05, 0.85, 0.05])


def test_slm_initial_soft_label_and_ramps():
    z = initial_logits(torch.tensor([1, 0]), num_classes=7, k=5, p=0.97)
    q = torch.softmax(z, 1)
    assert q[0, 1].item() == pytest.approx(0.97, abs=1e-6)
    assert q[0, 0].item() == pytest.approx(0.03 / 6, abs=1e-6)
    assert ramp_up(0, 1.6, 7) == pytest.approx(math.exp(-1.6 ** 2))
    assert ramp_up(3.5, 1.6, 7) == pytest.approx(math.exp(-(1.6 - 0.5) ** 2))
    assert ramp_up(9, 1.6, 7) == 1 and ramp_down(5, 1.6, 7) == 1
    assert ramp_down(14, 1.6, 7) == pytest.approx(math.exp(-(1.6 - 0.5) ** 2))


def test_slm_mining_step_by_hand_and_direction():
    z = torch.tensor([[2.0, 0.0, 0.0]])
    pred = torch.tensor([[0.1, 0.8, 0.1]])
    q = torch.softmax(z, 1)
    new = mining_step(z, pred, torch.tensor([0]), w_u=1.0, w_d=0.2, lam=200)
    expected = z - 200 * (1.0 * (q - pred) + 0.2 * (q - torch.tensor([[1.0, 0, 0]])))
    assert torch.allclose(new, expected)
    # After warm-up (w_u = 1 dominates) the mined label moves toward the prediction.
    assert torch.softmax(new, 1)[0, 1] > q[0, 1]
    assert torch.autograd.functional.jacobian is not None
    # The closed form is the gradient of the batch-mean loss the public code differentiates.
    zz = z.clone().requires_grad_(True)
    loss = 1.0 * -(pred * F.log_softmax(zz, 1)).sum(1).mean() + 0.2 * F.cross_entropy(zz, torch.tensor([0]))
    loss.backward()
    assert torch.allclose(new, z - 200 * zz.grad)


def test_aea_prediction_does_not_depend_on_batch_mates_at_eval(tmp_path):
    summary = run_training(load_config(None, tiny(tmp_path / "r", "method.name=slm_aea", "optim.epochs=1")))
    from ldl.data import build_splits
    from ldl.train import Job
    cfg = load_config(None, tiny(tmp_path / "r", "method.name=slm_aea", "optim.epochs=1"))
    job = Job(cfg, build_splits(cfg, ("train", "test")))
    job.load_state(checkpoint.load(tmp_path / "r" / "checkpoint.pt"))
    job.model.eval(), job.method.eval()
    loader = job.eval_loader("test")
    images = next(iter(loader))["image"]
    alone = job.method.predict(job.model, images[:1])
    with_mates = job.method.predict(job.model, images[:32])[:1]
    other_mates = job.method.predict(job.model, torch.cat([images[:1], images[100:140]]))[:1]
    assert torch.allclose(alone, with_mates, atol=1e-5) and torch.allclose(alone, other_mates, atol=1e-5)
    # ... while in training mode the AEA embedding uses the batch mean (the point of AEA).
    feats = job.model(images[:32])["features"]
    shifted = job.method.augmented_logits(job.model, feats[:1], feats.mean(0))
    assert not torch.allclose(shifted, alone, atol=1e-4)
    assert summary["noise_detection"] == {}  # no noise injected: nothing to score


def test_slm_mined_labels_are_checkpointed_and_scored(tmp_path):
    summary = run_training(load_config(None, tiny(tmp_path / "r", "method.name=slm_aea", "optim.epochs=2",
                                                  "method.slm_aea.beta=1.0", "data.noise.type=symmetric",
                                                  "data.noise.rate=0.3")))
    state = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    logits = state["method"]["label_logits"]
    assert logits.shape == (1500, 8)
    given = torch.softmax(logits, 1)[torch.arange(1500), torch.from_numpy(
        __import__("numpy").loadtxt(tmp_path / "r" / "samples.csv", delimiter=",", skiprows=1, usecols=1, dtype=int))]
    assert (given < 0.97 - 1e-3).any()   # mining moved labels away from their initial 0.97
    recovery = summary["noise_detection"]["label_recovery"]
    assert 0 <= recovery["accuracy"] <= 1 and "noise_score" in summary["noise_detection"]
    header = (tmp_path / "r" / "samples.csv").read_text().splitlines()[0]
    assert "mined_label" in header and "mined_7" in header


def test_scn_rank_regularisation_by_hand():
    alpha = torch.tensor([0.9, 0.8, 0.5, 0.45, 0.3, 0.2, 0.7, 0.6, 0.4, 0.1])
    # beta 0.7 -> top 7 {.9 .8 .7 .6 .5 .45 .4} mean .65, rest {.3 .2 .1} mean .2: gap .45 > margin
    assert rank_regularisation(alpha, 0.7, 0.15).item() == pytest.approx(0.0)
    flat = torch.tensor([0.5] * 9 + [0.4])
    # top 7 mean .5, rest {.5 .5 .4} mean .4667: 0.15 - 0.0333
    assert rank_regularisation(flat, 0.7, 0.15).item() == pytest.approx(0.15 - (0.5 - 1.4 / 3), abs=1e-6)


def test_rul_mixing_weights_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    confidence = torch.tensor([3.0, 1.0])
    mixed, w = relative_mix(mu, confidence, torch.tensor([1, 0]))
    assert w.tolist() == pytest.approx([0.75, 0.25])
    assert mixed.tolist() == [pytest.approx([0.75, 0.25]), pytest.approx([0.75, 0.25])]


def test_rul_noise_score_is_the_log_of_the_learned_uncertainty_by_hand():
    # The authors' branch outputs log_var; u_i = mean(exp(log_var_i)) is the *uncertainty*
    # (mixup_data weights by it, so a hard / mislabelled sample learns a large u_i): the noise
    # score is +log u_i.  Three 1x1x1 feature maps x; the log-variance head (eval mode, BN
    # statistics set to the identity) gives log_var_i = (x_i, 0), so u_i = (e^x_i + 1) / 2.
    from omegaconf import OmegaConf
    from ldl.methods.base import MethodContext
    from ldl.methods.rul import RUL
    ctx = MethodContext(num_classes=2, num_train=3, feature_dim=1, epochs=1, steps_per_epoch=1, batch_size=3,
                        device=torch.device("cpu"))
    method = RUL(OmegaConf.create({"embed_dim": 2, "dropout": 0.4}), ctx).eval()
    bn2d, linear, bn1d = method.log_var[0], method.log_var[3], method.log_var[4]
    bn2d.running_var.fill_(1 - bn2d.eps)
    bn1d.running_var.fill_(1 - bn1d.eps)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0], [0.0]]))
        linear.bias.zero_()
    x = torch.tensor([0.0, math.log(3.0), math.log(0.5)])    # u = 1, 2, 0.75
    _, scores = method.score(lambda images, return_map: {"feature_map": images}, x.view(3, 1, 1, 1))
    assert scores["noise_score"].tolist() == pytest.approx([0.0, math.log(2.0), math.log(0.75)], abs=1e-6)
    method.uncertainty.copy_(torch.tensor([1.0, 2.0, 0.75]))
    exports = method.sample_exports()
    assert exports["train_pass_noise_score"].tolist() == pytest.approx([0.0, math.log(2.0), math.log(0.75)])
    # the most uncertain sample (u = 2) takes the larger share of every pair it is mixed into
    _, w = relative_mix(torch.eye(3), method.uncertainty, torch.tensor([1, 2, 0]))
    assert w.tolist() == pytest.approx([1 / 3, 2 / 2.75, 0.75 / 1.75])


def test_eac_cam_and_flip_match_the_public_codes_grid_sample():
    fmap = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    weight = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    cam = class_activation_maps(fmap, weight)
    assert cam[0, 1].tolist() == (0.5 * fmap[0, 0] - fmap[0, 1]).tolist()
    # The public code flips with grid_sample on a mirrored grid (align_corners=True).
    h, w = 3, 4
    xs = torch.arange(w).view(1, -1).expand(h, -1).float()
    ys = torch.arange(h).view(-1, 1).expand(-1, w).float()
    grid = torch.stack([-(2 * xs / (w - 1) - 1), 2 * ys / (h - 1) - 1], -1)[None]
    theirs = F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)
    assert torch.allclose(theirs, cam.flip(-1))
    assert attention_consistency(cam, cam.flip(-1)).item() == 0
    assert attention_consistency(cam, cam).item() > 0


def test_eac_consistency_trains_features_not_the_classifier():
    from omegaconf import OmegaConf
    from ldl.methods.base import MethodContext
    from ldl.methods.eac import EAC
    from ldl.models import build_model
    model = build_model("resnet18", 4, width=8, stem="small")
    ctx = MethodContext(num_classes=4, num_train=8, feature_dim=64, epochs=1, steps_per_epoch=1, batch_size=8,
                        device=torch.device("cpu"))
    method = EAC(OmegaConf.create({"lam": 5.0, "independent_erasing": True}), ctx)
    batch = {"image": torch.randn(8, 3, 32, 32), "label": torch.zeros(8, dtype=torch.long)}
    out = method.training_step(model, batch, 0)
    consistency_only = out.loss - F.cross_entropy(out.logits, batch["label"])
    consistency_only.backward()
    assert model.fc.weight.grad is None or model.fc.weight.grad.abs().max() == 0
    assert model.backbone.conv1.weight.grad.abs().max() > 0


@pytest.mark.parametrize("name", ["scn", "rul", "eac", "label_smoothing"])
def test_each_peer_trains_and_exports(tmp_path, name):
    summary = run_training(load_config(None, tiny(tmp_path / "r", f"method.name={name}", "optim.epochs=1",
                                                  "data.noise.type=symmetric", "data.noise.rate=0.2",
                                                  "method.scn.relabel_start=0")))
    assert 0 <= summary["final"]["test"]["accuracy"] <= 1
    assert "model_noise_score" in summary["noise_detection"]
    if name in ("scn", "rul"):
        assert "noise_score" in summary["noise_detection"]


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "ldlva", "ldlva:faithful", "slm_aea", "scn", "rul",
                                  "eac", "ovr"])
def test_each_method_trains_under_bf16_autocast(tmp_path, name):
    # The AMP path of a GPU run, on CPU: per-sample state written from bf16 activations must keep
    # its dtype (index_put refuses mixed dtypes) and every metric must stay finite.
    method, _, mode = name.partition(":")
    summary = run_training(load_config(None, tiny(
        tmp_path / "r", f"method.name={method}", f"method.ldlva.mode={mode or 'fast'}", "amp_cpu=true",
        "optim.epochs=2", "data.synthetic.num_train=192", "data.synthetic.num_val=64", "data.synthetic.num_test=64",
        "model.width=8", "method.scn.relabel_start=0", "method.slm_aea.beta=1.0",
        "data.noise.type=symmetric", "data.noise.rate=0.2")))
    state = checkpoint.load(tmp_path / "r" / "checkpoint.pt")
    assert all(t.dtype != torch.bfloat16 for t in state["method"].values() if isinstance(t, torch.Tensor))
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(math.isfinite(r["train_loss"]) for r in records)
    assert math.isfinite(summary["final"]["test"]["nll"]) and 0 <= summary["final"]["test"]["accuracy"] <= 1
