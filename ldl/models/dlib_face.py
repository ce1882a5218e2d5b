"""dlib's face-recognition ResNet as a torch backbone, with weights read from dlib's own file.

The network is `anet_type` of dlib's examples/dnn_face_recognition_ex.cpp, the network of
`dlib_face_recognition_resnet_model_v1.dat` (shipped by the `face-recognition-models` package,
CC0 1.0; trained by Davis King on about 3 million faces, 99.38 % on LFW).  Bottom to top:

    input_rgb_image_sized<150>            150x150 RGB, x = (pixel - avg[c]) / 256 with the file's
                                          avg = (122.782, 117.001, 104.298) (R, G, B)
    con<32,7,7,2,2> affine relu           7x7 stride-2 conv, *no padding* (dlib pads only stride-1
    max_pool<3,3,2,2>                     layers, by nr/2), 3x3 stride-2 max pool, no padding
    level4  ares<32> x 3                  ares      = relu(block(x) + x)
    level3  ares_down<64>,  ares<64> x 3  ares_down = relu(block_s2(x) + avg_pool<2,2,2,2>(x))
    level2  ares_down<128>, ares<128> x 2 block_s   = affine(con3x3_s1(relu(affine(con3x3_s(x)))))
    level1  ares_down<256>, ares<256> x 2
    level0  ares_down<256>
    avg_pool_everything fc_no_bias<128>   the 128-d descriptor (loss_metric: distance < 0.6 = same)

`affine` is dlib's deployed form of batch norm: a per-channel scale and shift with the
statistics folded in (no batch statistics; trainable here, as frozen-statistics fine-tuning).
dlib's add_prev adds tensors of different shapes by padding the smaller with zeros (channels
after, rows and columns below and right): the stride-2 conv of a down-sampling block and its
2x2 average pool disagree on odd sizes (at 150 px level1 gives 3x3 against 4x4), and the
skip's missing channels are zeros.  All of that is reproduced exactly.

In `FERNet` the backbone's feature map is the 128-channel map of the descriptor layer applied
at every position (fc_no_bias as a 1x1 conv; it commutes with the average pool), so the
pooled features ARE dlib's descriptor (checked against dlib in tests/test_dlib_face.py) and a
classifier on them gives exact class-activation maps (EAC).  Input: the data pipeline's
ImageNet-normalised RGB tensor at any size; the backbone maps it back to dlib's normalisation
and resizes it (bilinear, antialiased when shrinking) to `input_size` (150, the native size,
by default; the smallest size the strides allow is MIN_INPUT_SIZE).

Weights: `read_dlib_net` parses dlib's serialisation (dlib/serialize.h, dlib/dnn/core.h,
layers.h, input.h, loss.h, tensor.h) with no dlib installed:
  integer     one control byte (0x80 = negative, low 4 bits = byte count; 0x70 always clear),
              then the magnitude, little-endian
  float       float_details: mantissa (int64) then exponent (int16) as integers, value
              mantissa * 2**exponent; exponents 32000/32001/32002 = inf/-inf/nan
  string      length (integer) then the bytes; bool: the byte '1' or '0'
  tensor      version 1: n, k, nr, nc then every value as a float; version 2: the same sizes
              then raw little-endian float32; alias_tensor: version 1 then n, k, nr, nc
  network     loss wrapper: version, loss details, subnetwork.  add_layer: version (1, 2; the
              layer on the input 2 or 3), subnetwork, details, 3 bools, x_grad and
              cached_output tensors, then params_grad (v2) or grad_final and the sample
              expansion factor (input layer, v2 / v3).  tag and skip: version 1 and the
              subnetwork.  So the versions come top-down, the input layer, then every layer's
              details bottom-up.
  details     "con_4": params, num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x,
              filters and biases (alias tensors), 4 multipliers; params = filters
              [out, in, kh, kw] then biases.  "affine_": params (gamma then beta), the two
              aliases, [mode].  "fc_2": num_outputs, num_inputs, params (a num_inputs x
              num_outputs matrix: out = in @ W), aliases, bias mode, 4 multipliers.
              "max_pool_2" / "avg_pool_2": nr, nc, strides, paddings (nr = 0: whole map).
              "relu_", "add_prev_": nothing.  "input_rgb_image_sized": avg R, G, B, NR, NC.
The expected layer sequence comes from this module's own structure (`DlibFaceResNet.dlib_layers`),
and every version, kind, shape, stride and padding read is checked against it.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldl.data.augment import IMAGENET_MEAN, IMAGENET_STD

NATIVE_SIZE = 150
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)   # input_rgb_image_sized's defaults; the file's values are used
WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"


class DlibFormatError(ValueError):
    """The file is not (this part of) a dlib serialisation."""


# ----------------------------------------------------------------------------- the format reader
class DlibReader:
    """Reads dlib-serialised values from bytes, front to back."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data, self.pos, self.name = memoryview(data), 0, name

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: {what} at byte {self.pos}")

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise self._fail(f"unexpected end of data (wanted {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise self._fail("unexpected end of data")
        return self.data[self.pos]

    def int(self) -> int:
        control = self.peek()
        if control & 0x70:
            raise self._fail(f"byte 0x{control:02x} is not an integer's control byte")
        self.pos += 1
        size = control & 0x0F
        if size > 8:
            raise self._fail(f"integer of {size} bytes")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        if self.peek() & 0x70:
            raise self._fail("a float in dlib's old ASCII format (not supported)")
        mantissa, exponent = self.int(), self.int()
        special = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        return special[exponent] if exponent in special else float(np.ldexp(float(mantissa), exponent))

    def string(self) -> str:
        return bytes(self._take(self.int())).decode("latin-1")

    def bool(self) -> bool:
        byte = bytes(self._take(1))
        if byte not in (b"0", b"1"):
            raise self._fail(f"byte {byte!r} is not a serialised bool")
        return byte == b"1"

    def tensor(self) -> np.ndarray:
        """A dlib resizable_tensor as float32 [n, k, nr, nc]."""
        version = self.int()
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        if version == 1:
            return np.array([self.float() for _ in range(count)], dtype=np.float32).reshape(shape)
        if version == 2:
            return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32).reshape(shape)
        raise self._fail(f"tensor version {version} (known: 1, 2)")

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self._fail(f"alias_tensor version {version} (known: 1)")
        return tuple(self.int() for _ in range(4))

    def expect(self, got, want, what: str) -> None:
        if got != want:
            raise self._fail(f"{what} is {got!r}, expected {want!r}")


@dataclass
class Layer:
    """One dlib layer in the chain: kind is a details name ('con', 'affine', 'relu', 'max_pool',
    'avg_pool', 'add_prev', 'fc') or 'tag' / 'skip'; `expect` holds the sizes to check and
    `module` the torch module that receives its parameters."""
    kind: str
    expect: dict = field(default_factory=dict)
    module: nn.Module | None = None


def _read_details(r: DlibReader, layer: Layer) -> dict:
    name = r.string()
    want = {"con": "con_4", "affine": "affine_", "relu": "relu_", "max_pool": "max_pool_2",
            "avg_pool": "avg_pool_2", "add_prev": "add_prev_", "fc": "fc_2"}[layer.kind]
    r.expect(name, want, f"{layer.kind} layer version")
    out: dict = {}
    if layer.kind == "con":
        params = r.tensor().reshape(-1)
        sizes = dict(num_filters=r.int(), nr=r.int(), nc=r.int(), stride_y=r.int(), stride_x=r.int(),
                     padding_y=r.int(), padding_x=r.int())
        filters, biases = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):
            r.float()  # learning-rate and weight-decay multipliers
        n = int(np.prod(filters))
        r.expect(params.size, n + int(np.prod(biases)), "con params size")
        out = {**sizes, "weight": params[:n].reshape(filters), "bias": params[n:]}
    elif layer.kind == "affine":
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias_tensor(), r.alias_tensor()
        if not r.peek() & 0x70:  # newer dlib writes the mode (an integer); bools follow otherwise
            r.expect(r.int(), 0, "affine mode (CONV_MODE = 0: per channel)")
        n = int(np.prod(gamma))
        r.expect(params.size, n + int(np.prod(beta)), "affine params size")
        out = {"weight": params[:n], "bias": params[n:]}
    elif layer.kind == "fc":
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        r.alias_tensor(), r.alias_tensor()
        has_bias = r.int() == 0  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        for _ in range(4):
            r.float()
        r.expect(params.size, inputs * outputs + (outputs if has_bias else 0), "fc params size")
        out = {"outputs": outputs, "inputs": inputs, "has_bias": has_bias,
               "weight": params[:inputs * outputs].reshape(inputs, outputs).T.copy()}
    elif layer.kind in ("max_pool", "avg_pool"):
        out = dict(nr=r.int(), nc=r.int(), stride_y=r.int(), stride_x=r.int(), padding_y=r.int(), padding_x=r.int())
    for key, value in layer.expect.items():
        r.expect(out.get(key), value, f"{layer.kind} {key}")
    return out


def read_dlib_net(path: str | Path, layers: list[Layer]) -> dict:
    """Parse a dlib loss_metric network file whose layers, bottom-up, are `layers` (the input
    layer excluded); returns {"input": {...}, "loss": {...}, "layers": [details per layer]}."""
    path = Path(path)
    r = DlibReader(path.read_bytes(), str(path))
    r.expect(r.int(), 1, "add_loss_layer version")
    loss_name = r.string()
    if not loss_name.startswith("loss_metric"):
        raise r._fail(f"loss layer {loss_name!r}: not a dlib metric-learning network")
    loss = {"margin": r.float(), "distance_threshold": r.float() if loss_name == "loss_metric_2" else None}
    versions = []
    for i, layer in enumerate(reversed(layers)):           # versions come top-down
        v = r.int()
        first = i == len(layers) - 1
        ok = {1} if layer.kind in ("tag", "skip") else ({2, 3} if first else {1, 2})
        if v not in ok:
            raise r._fail(f"{layer.kind} wrapper version {v} (expected one of {sorted(ok)})")
        versions.append(v)
    r.expect(r.string(), "input_rgb_image_sized", "input layer")
    avg = tuple(r.float() for _ in range(3))
    size = (r.int(), r.int())
    details = []
    for i, (layer, version) in enumerate(zip(layers, reversed(versions))):   # details bottom-up
        if layer.kind in ("tag", "skip"):
            details.append({})
            continue
        details.append(_read_details(r, layer))
        for _ in range(3):
            r.bool()   # this_layer_setup_called, gradient_input_is_stale, get_output_..._disabled
        r.tensor(), r.tensor()   # x_grad, cached_output
        if i == 0:
            r.tensor()   # grad_final
            if version == 3:
                r.int()  # sample expansion factor
        elif version == 2:
            r.tensor()   # params_grad
    if r.pos != len(r.data):
        raise r._fail(f"{len(r.data) - r.pos} bytes left after the network")
    return {"input": {"avg_rgb": avg, "size": size}, "loss": loss, "layers": details}


# ----------------------------------------------------------------------------- the network
class Affine(nn.Module):
    """dlib's affine layer (batch norm with its statistics folded in): x * weight + bias per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, the smaller tensor padded with zeros
    (channels after, rows below, columns to the right)."""
    if a.shape == b.shape:
        return a + b
    k, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, k - t.shape[1]))
    return pad(a) + pad(b)


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Conv2d:
    # dlib pads a conv by kernel/2 only when its stride is 1
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2 if stride == 1 else 0)


class Residual(nn.Module):
    """ares<N> (stride 1, identity skip) or ares_down<N> (stride 2, 2x2 average-pool skip)."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1, self.affine1 = _conv(cin, cout, 3, 2 if down else 1), Affine(cout)
        self.conv2, self.affine2 = _conv(cout, cout, 3, 1), Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_prev(out, F.avg_pool2d(x, 2, 2) if self.down else x))

    def dlib_layers(self) -> list[Layer]:
        s = 2 if self.down else 1
        body = [Layer("tag"), Layer("con", {"num_filters": self.conv1.out_channels, "stride_y": s}, self.conv1),
                Layer("affine", {}, self.affine1), Layer("relu"),
                Layer("con", {"num_filters": self.conv2.out_channels, "stride_y": 1}, self.conv2),
                Layer("affine", {}, self.affine2)]
        if self.down:
            body += [Layer("tag"), Layer("skip"), Layer("avg_pool", {"nr": 2, "stride_y": 2, "padding_y": 0})]
        return body + [Layer("add_prev"), Layer("relu")]


# (level name, width, down-sampling first block, blocks) bottom-up, as dnn_face_recognition_ex.cpp
LEVELS = (("level4", 32, False, 3), ("level3", 64, True, 4), ("level2", 128, True, 3),
          ("level1", 256, True, 3), ("level0", 256, True, 1))


def _out(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def map_side(input_size: int) -> int:
    """Side of the last feature map for a square input, or 0 if some conv has no room."""
    s = _out(_out(input_size, 7, 2), 3, 2)
    for _, _, down, _ in LEVELS:
        if down:
            conv = _out(s, 3, 2)
            if conv < 1:
                return 0
            s = max(conv, _out(s, 2, 2))
    return s


MIN_INPUT_SIZE = next(s for s in range(16, 400) if map_side(s) >= 1)


class DlibFaceResNet(nn.Module):
    """The backbone: ImageNet-normalised RGB at any size -> the 128-channel descriptor map.
    `out_dim` = 128; pooled, the map is dlib's 128-d descriptor."""

    def __init__(self, input_size: int | None = None):
        super().__init__()
        self.input_size = int(input_size or NATIVE_SIZE)
        if self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"model.input_size={self.input_size}: the dlib face network needs at least "
                             f"{MIN_INPUT_SIZE} px (its stride-2 convs are unpadded); 150 is its native size")
        self.conv1, self.affine1 = _conv(3, 32, 7, 2), Affine(32)
        cin, blocks = 32, []
        for _, width, down, count in LEVELS:
            for i in range(count):
                blocks.append(Residual(cin, width, down and i == 0))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.descriptor = nn.Conv2d(256, 128, 1, bias=False)   # fc_no_bias<128>, applied per position
        self.out_dim = 128
        # ImageNet-normalised x -> dlib's (pixel - avg) / 256:  x * scale + shift per channel
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("in_scale", (std * 255 / 256).view(1, 3, 1, 1))
        self.register_buffer("in_shift", ((mean * 255 - torch.tensor(DLIB_MEAN_RGB)) / 256).view(1, 3, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def dlib_layers(self) -> list[Layer]:
        """This network as dlib's layer chain, bottom-up (the input layer excluded)."""
        layers = [Layer("con", {"num_filters": 32, "nr": 7, "stride_y": 2, "padding_y": 0}, self.conv1),
                  Layer("affine", {}, self.affine1), Layer("relu"),
                  Layer("max_pool", {"nr": 3, "stride_y": 2, "padding_y": 0})]
        for block in self.blocks:
            layers += block.dlib_layers()
        return layers + [Layer("avg_pool", {"nr": 0, "nc": 0, "stride_y": 1}),
                         Layer("fc", {"outputs": 128, "inputs": 256, "has_bias": False}, self.descriptor)]

    def load_dlib(self, path: str | Path) -> dict:
        """Copy the weights of a dlib_face_recognition_resnet_model_v1-style file into this module."""
        layers = self.dlib_layers()
        net = read_dlib_net(path, layers)
        for layer, details in zip(layers, net["layers"]):
            if layer.module is None:
                continue
            weight = torch.from_numpy(np.ascontiguousarray(details["weight"]))
            own = layer.module.weight
            if weight.numel() != own.numel():
                raise DlibFormatError(f"{path}: {layer.kind} weights of {tuple(weight.shape)} do not fit {tuple(own.shape)}")
            with torch.no_grad():
                own.copy_(weight.reshape(own.shape))
                if "bias" in details and layer.module.bias is not None:
                    layer.module.bias.copy_(torch.from_numpy(details["bias"]).reshape(layer.module.bias.shape))
        avg = torch.tensor(net["input"]["avg_rgb"], dtype=torch.float32)
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.in_shift.copy_(((mean * 255 - avg) / 256).view(1, 3, 1, 1))
        return net

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised input -> dlib's normalisation at input_size x input_size."""
        x = x * self.in_scale + self.in_shift
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=min(x.shape[-2:]) > self.input_size)
        return x

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """dlib-normalised input -> level0's 256-channel map."""
        x = F.max_pool2d(F.relu(self.affine1(self.conv1(x))), 3, 2)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptor(self.body(self.prepare(x)))


# ----------------------------------------------------------------------------- the package's files
def package_file(name: str) -> Path:
    """A model file of the `face-recognition-models` package (found without importing it: its
    __init__ needs pkg_resources, which recent setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{name} comes with the face-recognition-models package: "
                                "pip install face-recognition-models==0.3.0 (or the project's `face` extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed face-recognition-models package")
    return path


def dlib_face(input_size: int | None = None, pretrained: str | None = None) -> DlibFaceResNet:
    """The backbone with dlib's weights: from `pretrained` (a dlib .dat, or a torch state dict
    of this backbone, e.g. a fine-tuned one) or, by default, from the face-recognition-models package."""
    net = DlibFaceResNet(input_size)
    if pretrained and not str(pretrained).endswith(".dat"):
        from ldl.models import load_backbone_weights
        load_backbone_weights(net, pretrained)
    else:
        path = Path(pretrained).expanduser() if pretrained else package_file(WEIGHTS_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: dlib weights file not found: {path}")
        net.load_dlib(path)
    return net
