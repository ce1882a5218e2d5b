"""dlib's face-recognition ResNet in torch: the format reader on hand-written bytes, dlib's
zero-padding add, descriptor parity with dlib itself, and every method training on it."""
from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny
from ldl.config import load_config
from ldl.data.augment import normalize
from ldl.data.synthetic import SyntheticSpec, generate_split
from ldl.models import build_model
from ldl.models.dlib_face import (MIN_INPUT_SIZE, DlibFormatError, DlibReader, add_prev, map_side)

HAVE_DLIB = importlib.util.find_spec("dlib") is not None
HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None
needs_weights = pytest.mark.skipif(not HAVE_MODELS, reason="face-recognition-models is not installed "
                                   "(it is in the dev extra: pip install -e .[dev])")


def test_reader_decodes_a_hand_written_tensor():
    # dlib integers: a control byte (0x80 = negative, low nibble = byte count), then the
    # magnitude little-endian.  Floats (tensor version 1): mantissa then exponent, both integers.
    v1 = bytes([0x01, 0x01,                   # tensor version 1
                0x01, 0x01, 0x01, 0x03,       # n = 1, k = 3
                0x01, 0x01, 0x01, 0x01,       # nr = 1, nc = 1
                0x01, 0x03, 0x81, 0x02,       # 3 * 2**-2 = 0.75
                0x81, 0x01, 0x01, 0x00,       # -1 * 2**0 = -1
                0x01, 0x00, 0x01, 0x00])      # 0
    assert DlibReader(v1).tensor().tolist() == [[[[0.75]], [[-1.0]], [[0.0]]]]
    # Version 2: the same sizes, then raw little-endian float32.
    v2 = bytes([0x01, 0x02, 0x01, 0x02, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01]) + struct.pack("<2f", 1.5, -2.25)
    r = DlibReader(v2 + bytes([0x02, 0x2c, 0x01, 0x82, 0x00, 0x01]) + b"\x01\x05relu_1")
    assert r.tensor().reshape(-1).tolist() == [1.5, -2.25]
    assert r.int() == 300 and r.int() == -256
    assert r.string() == "relu_" and r.bool() is True and r.pos == len(r.data)
    with pytest.raises(DlibFormatError, match="not an integer"):
        DlibReader(b"1").int()
    with pytest.raises(DlibFormatError, match="end of data"):
        DlibReader(v2[:-1]).tensor()


def test_add_prev_pads_the_smaller_tensor_with_zeros_like_dlib():
    a, b = torch.ones(1, 2, 3, 3), torch.full((1, 4, 4, 4), 2.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, :2, :3, :3].eq(3).all() and out[0, 2:].eq(2).all() and out[0, :, 3].eq(2).all()
    # 150 px: level1's stride-2 conv gives 3x3 against its average pool's 4x4; level0 ends at 2x2.
    assert map_side(150) == 2 and map_side(MIN_INPUT_SIZE) == 1 and map_side(MIN_INPUT_SIZE - 1) == 0


def _chips() -> np.ndarray:
    """24 synthetic faces: 12 rendered at 150 px, 12 rendered at 50 px and upscaled to 150."""
    native = generate_split(SyntheticSpec(image_size=150, seed=3), "test", 12).images
    small = generate_split(SyntheticSpec(image_size=50, seed=4), "test", 12).images
    upscaled = np.stack([np.asarray(Image.fromarray(im).resize((150, 150), Image.BILINEAR)) for im in small])
    return np.concatenate([native, upscaled])


@needs_weights
@pytest.mark.skipif(not HAVE_DLIB, reason="dlib-bin is not installed (it is in the dev extra)")
def test_descriptor_equals_dlibs_on_24_chips():
    import dlib

    from ldl.models.dlib_face import WEIGHTS_FILE, package_file
    chips = _chips()
    recogniser = dlib.face_recognition_model_v1(str(package_file(WEIGHTS_FILE)))
    # The 150x150 overload runs the network on the chip as it is (num_jitters=0: no jitter, no resize).
    theirs = np.array([recogniser.compute_face_descriptor(np.ascontiguousarray(c), 0) for c in chips])
    model = build_model("dlib_face", 7, neck="none").eval()   # FERNet without neck: its pooled features are the descriptor
    x = normalize(torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255)
    with torch.no_grad():
        ours = model(x)["features"].numpy()
    diff = np.abs(ours - theirs).max()
    print(f"max |ours - dlib| over {len(chips)} chips x 128: {diff:.2e}")
    assert diff < 1e-4
    assert np.linalg.norm(theirs, axis=1).min() > 0.1   # real descriptors, not zeros


def test_actnorm_standardises_the_first_training_batch_then_is_one_fixed_affine_map():
    from ldl.models.neck import ActNorm
    torch.manual_seed(0)
    neck = ActNorm(3)
    spread, offset = torch.tensor([0.03, 2.0, 50.0])[:, None, None], torch.tensor([0.1, -1.0, 200.0])[:, None, None]
    first = torch.randn(8, 3, 2, 2) * spread + offset
    pooled = neck(first).mean((2, 3))
    torch.testing.assert_close(pooled.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    # by hand for channel 0: (x - mean) / std with the first batch's moments
    x0 = first[:, 0].mean((1, 2))
    torch.testing.assert_close(pooled[:, 0], (x0 - x0.mean()) / x0.std(unbiased=False), atol=1e-3, rtol=0)
    later = torch.randn(4, 3, 2, 2)
    in_training = neck(later)                     # no second initialisation ...
    assert torch.equal(neck.eval()(later), in_training)   # ... and evaluation computes the same map
    restored = ActNorm(3)
    restored.load_state_dict(neck.state_dict())
    assert torch.equal(restored.train()(later), in_training)   # a resumed run does not re-initialise


@needs_weights
def test_the_neck_brings_dlibs_descriptor_to_unit_scale_and_keeps_class_activation_maps_exact():
    x = normalize(torch.from_numpy(_chips()).permute(0, 3, 1, 2).float() / 255)
    raw, necked = build_model("dlib_face", 7, neck="none").train(), build_model("dlib_face", 7).train()
    with torch.no_grad():
        raw_spread = raw(x)["features"].std(0).mean().item()
        out = necked(x, return_map=True)
    assert raw_spread < 0.1   # across faces each descriptor value moves by a few hundredths
    assert 0.5 < out["features"].std(0).mean().item() < 1.5
    cam_logits = torch.einsum("kc,nchw->nk", necked.fc.weight, out["feature_map"]) / out["feature_map"][0, 0].numel()
    torch.testing.assert_close(cam_logits + necked.fc.bias, out["logits"], rtol=1e-5, atol=1e-5)
    assert not any(k.startswith("neck.") for k in build_model("resnet18", 7, width=8, stem="small").state_dict())
    with pytest.raises(ValueError, match="model.neck"):
        build_model("resnet18", 7, neck="layer")


@needs_weights
def test_backbone_resizes_any_input_and_rejects_too_small_sizes():
    model = build_model("dlib_face", 7, input_size=MIN_INPUT_SIZE).eval()
    with torch.no_grad():
        for side in (48, 100):
            out = model(torch.randn(2, 3, side, side), return_map=True)
            assert out["feature_map"].shape == (2, 128, 1, 1) and out["logits"].shape == (2, 7)
    with pytest.raises(ValueError, match="at least"):
        build_model("dlib_face", 7, input_size=MIN_INPUT_SIZE - 1)
    with pytest.raises(ValueError, match="input_size applies"):
        build_model("resnet18", 7, input_size=112)


@needs_weights
@pytest.mark.parametrize("method", ["ce", "label_smoothing", "scn", "rul", "eac", "slm_aea", "ldlva"])
def test_every_method_trains_a_few_steps_on_the_dlib_backbone(tmp_path, method):
    from ldl.train import run_training
    cfg = load_config(None, tiny(tmp_path / "r", "model.arch=dlib_face", f"model.input_size={MIN_INPUT_SIZE}",
                                 f"method.name={method}", "optim.epochs=1", "optim.batch_size=16",
                                 "optim.lr_mult.backbone=0.1", "data.synthetic.num_train=32",
                                 "data.synthetic.num_val=16", "data.synthetic.num_test=16",
                                 "method.scn.relabel_start=0", "method.ldlva.space=features"))
    summary = run_training(cfg)
    assert 0 <= summary["final"]["test"]["accuracy"] <= 1


def test_reports_name_the_face_backbones_own_weights_as_its_start():
    from ldl.report import start_label
    assert start_label({"model.arch": "dlib_face", "model.pretrained": None}) == "dlib_face's own pretrained weights"
    assert start_label({"model.arch": "resnet18", "model.pretrained": None}) == "random weights"
    assert start_label({"model.arch": "resnet18", "model.pretrained": "b.pth"}) == "pretrained weights (b.pth)"
