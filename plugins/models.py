"""Built-in model families. Every hidden layer ends in a :class:`genbench.taps.Tap`.

Convolutional families put the layer's max-pooling *inside* its tap, after the
nonlinearity (``Tap(Sequential(act, pool))``): a tap's output is then exactly what
the next weight layer reads, so a regularizer acting on it acts where the paper's
tables put it ("Conv-512 Maxpooling Dropout(0.1) Dense-512"). A family that
reproduces the paper's dropout placements marks each tap with ``dropout_scale``
(the fraction of the dropout rate used there). See docs/models-and-data.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

import genbench
from genbench.components import ModelFamily, Params
from genbench.lazy import lazy_module

if TYPE_CHECKING:  # pragma: no cover
    from genbench.taps import Tap

# Imported when a model is first built: the registry loads this module without torch.
nn = lazy_module("torch.nn")
_taps = lazy_module("genbench.taps")

ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU"}
ACTIVATION_PATTERN = "^(relu|tanh|sigmoid|gelu)$"


def activation(name: str) -> nn.Module:
    """A new activation module by its params name (``ACTIVATIONS`` maps it to torch.nn's class)."""
    return getattr(nn, ACTIVATIONS[name])()


class MLP(ModelFamily):
    """Fully connected network: depth hidden layers of `width` units (Linear -> [BatchNorm] -> activation -> Tap)."""

    name = "mlp"
    version = "1"

    class Params(Params):
        depth: int = Field(2, ge=1, le=64, description="number of hidden layers")
        width: int = Field(64, ge=1, description="units per hidden layer")
        widths: list[int] | None = Field(None, description="explicit hidden widths (overrides depth/width)")
        activation: str = Field("relu", pattern=ACTIVATION_PATTERN)
        batch_norm: bool = False
        bias: bool = True

    def build(self, input_shape, n_classes):
        p = self.params
        widths = p.widths or [p.width] * p.depth
        layers: list[nn.Module] = [nn.Flatten()] if len(input_shape) > 1 else []
        fan_in = math.prod(input_shape)
        for w in widths:
            layers.append(nn.Linear(fan_in, w, bias=p.bias))
            if p.batch_norm:
                layers.append(nn.BatchNorm1d(w))
            layers.append(_taps.Tap(activation(p.activation)))
            fan_in = w
        layers.append(nn.Linear(fan_in, n_classes, bias=p.bias))
        return _taps.number_taps(nn.Sequential(*layers))


# -- shared pieces of the convolutional families ------------------------------------
def layer(kind: str, nd: int) -> type[nn.Module]:
    """torch.nn's ``kind`` for ``nd`` spatial dimensions: layer("Conv", 2) is nn.Conv2d."""
    return getattr(nn, f"{kind}{nd}d")
Init = Literal["torch", "glorot", "kaiming"]


def spatial_dims(input_shape: tuple[int, ...], family: str) -> int:
    """1 for (C, L) inputs, 2 for (C, H, W); anything else is a clear error."""
    if len(input_shape) not in (2, 3):
        raise ValueError(f"model '{family}' needs inputs shaped (C, L) or (C, H, W), got "
                         f"{tuple(input_shape)}; use the dataset's channel layout "
                         "(mnist1d layout='channels', digits layout='image')")
    return len(input_shape) - 1


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ConvStack:
    """Builds Conv -> [BN] -> Tap(act [, pool]) blocks and Dense -> [BN] -> Tap(act) layers,
    tracking the feature-map size so the first dense layer knows its fan-in."""

    def __init__(self, input_shape, activation: str, batch_norm: bool, family: str):
        self.nd = spatial_dims(input_shape, family)
        self.channels = input_shape[0]
        self.size = list(input_shape[1:])
        self.act, self.bn = activation, batch_norm
        self.layers: list[nn.Module] = []
        self.taps: list[Tap] = []

    def conv(self, out_ch: int, kernel: int, padding: int, pool: int | None = None) -> Tap:
        if any(s + 2 * padding < kernel for s in self.size):
            raise ValueError(f"a {kernel}-wide kernel does not fit the {self.size} feature map")
        self.layers.append(layer("Conv", self.nd)(self.channels, out_ch, kernel, padding=padding))
        if self.bn:
            self.layers.append(layer("BatchNorm", self.nd)(out_ch))
        self.channels = out_ch
        self.size = [s + 2 * padding - kernel + 1 for s in self.size]
        act: nn.Module = activation(self.act)
        if pool is not None:
            # A pool wider than the map is shrunk to it; a 1-wide map is not pooled at all.
            k = min([pool, *self.size])
            if k >= 2:
                act = nn.Sequential(act, layer("MaxPool", self.nd)(k))
                self.size = [s // k for s in self.size]
        tap = _taps.Tap(act)
        self.layers.append(tap)
        self.taps.append(tap)
        return tap

    def flatten(self) -> int:
        self.layers.append(nn.Flatten())
        return self.channels * math.prod(self.size)

    def dense(self, fan_in: int, units: int) -> Tap:
        self.layers.append(nn.Linear(fan_in, units))
        if self.bn:
            self.layers.append(nn.BatchNorm1d(units))
        tap = _taps.Tap(activation(self.act))
        self.layers.append(tap)
        self.taps.append(tap)
        return tap


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """'torch' keeps PyTorch's defaults; 'glorot' is Keras' default (Glorot-uniform kernels,
    zero biases: the paper's code was Keras); 'kaiming' is He-normal (fan_out) for convs and
    N(0, 0.01) for dense layers, as torchvision's VGG."""
    if scheme == "torch":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            if scheme == "glorot":
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def place_dropout(taps: list[Tap], scales: list[float]) -> None:
    for tap, s in zip(taps, scales):
        tap.dropout_scale = float(s)


class ConvParams(Params):
    width: float = Field(1.0, gt=0, le=16, description="multiplies every hidden layer's channels/units")
    activation: str = Field("relu", pattern=ACTIVATION_PATTERN)
    batch_norm: bool = Field(False, description="BatchNorm between each hidden layer and its activation")
    init: Init = Field("glorot", description="'glorot' (Keras default, as the paper's code), "
                       "'kaiming' (torchvision VGG) or 'torch' (PyTorch defaults)")


# -- the paper's small CNN (Table 3) -----------------------------------------------------
class CNN(ModelFamily):
    """The paper's small CNN (Table 3): Conv-64 Conv-128 (3x3, valid) MaxPool-7 Dense-128; 1-D for (C, L) inputs."""

    name = "cnn"
    version = "2"  # 2: Table 3's single dropout placement

    class Params(ConvParams):
        channels: list[int] = Field([64, 128], min_length=1, description="conv channels (before width)")
        kernel_size: int = Field(3, ge=1)
        padding: Literal["valid", "same"] = Field("valid", description="'valid' as Keras' default")
        pool: int = Field(7, ge=1, description="max-pool size after the last conv (shrunk to fit the map)")
        dense: list[int] = Field([128], description="hidden dense units (before width); "
                                 "[128, 2] gives Figure 1's 2-unit feature layer")
        dropout_placement: Literal["paper", "every"] = Field(
            "paper", description="'paper': dropout after the first dense hidden layer only (Table 3); "
            "'every': after every hidden layer")

    def build(self, input_shape, n_classes):
        p = self.params
        stack = ConvStack(input_shape, p.activation, p.batch_norm, self.name)
        pad = p.kernel_size // 2 if p.padding == "same" else 0
        for i, ch in enumerate(p.channels):
            last = i == len(p.channels) - 1
            stack.conv(scaled(ch, p.width), p.kernel_size, pad, pool=p.pool if last else None)
        fan_in = stack.flatten()
        for units in p.dense:
            stack.dense(fan_in, scaled(units, p.width))
            fan_in = scaled(units, p.width)
        n_conv = len(p.channels)
        # Table 3: "Dense-128 Dropout-0.3 Dense-2": dropout after the first dense layer only.
        place_dropout(stack.taps, [1.0 if p.dropout_placement != "paper" or i == n_conv else 0.0
                                   for i in range(len(stack.taps))])
        model = nn.Sequential(*stack.layers, nn.Linear(fan_in, n_classes))
        return _taps.number_taps(initialize(model, p.init))


# -- VGG-like (the paper's Tables 5-7) ------------------------------------------------------
VGG_LAYOUTS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def vgg_plan(depth: int) -> list[tuple[int, bool]]:
    """(channels, followed by a max-pool) for each conv of VGG-``depth``."""
    layout = VGG_LAYOUTS[depth]
    return [(c, i + 1 < len(layout) and layout[i + 1] == "M")
            for i, c in enumerate(layout) if c != "M"]


def vgg_paper_scales(depth: int) -> list[float]:
    """Dropout placement of Tables 5-7 as fractions of the rate (the tables are at rate 0.3):
    Dropout(0.3) after every conv not followed by a pool (1), none after a conv followed
    by a pool (0), Dropout(0.1) after the last pool and after Dense-512 (1/3)."""
    plan = vgg_plan(depth)
    scales = [0.0 if pooled else 1.0 for _, pooled in plan]
    scales[-1] = 1 / 3
    return scales + [1 / 3]


class VGG(ModelFamily):
    """VGG-like network of the paper's Tables 5-7: depth 11/13/16/19, 3x3 convs, Dense-512, width multiplier."""

    name = "vgg"
    version = "1"

    class Params(ConvParams):
        depth: Literal[11, 13, 16, 19] = 16
        dense: int = Field(512, ge=1, description="units of the hidden dense layer (before width)")
        dropout_placement: Literal["paper", "every"] = Field(
            "paper", description="'paper': Tables 5-7 (rate at the 0.3 positions, rate/3 at the "
            "0.1 positions); 'every': the rate after every hidden layer")

    def build(self, input_shape, n_classes):
        p = self.params
        stack = ConvStack(input_shape, p.activation, p.batch_norm, self.name)
        for ch, pooled in vgg_plan(p.depth):
            stack.conv(scaled(ch, p.width), 3, 1, pool=2 if pooled else None)
        fan_in = stack.flatten()
        units = scaled(p.dense, p.width)
        stack.dense(fan_in, units)
        place_dropout(stack.taps, vgg_paper_scales(p.depth) if p.dropout_placement == "paper"
                      else [1.0] * len(stack.taps))
        model = nn.Sequential(*stack.layers, nn.Linear(units, n_classes))
        return _taps.number_taps(initialize(model, p.init))


# -- AlexNet-like ------------------------------------------------------------------------------
def alexnet_convs(depth: int) -> list[tuple[int, int]]:
    """(channels, kernel) of the convs of an AlexNet-like net with ``depth`` weight layers:
    depth - 3 convs (two 5x5 stem convs, then 3x3 convs: 384s, ending with two 256s)
    before the two hidden dense layers and the output layer. Depth 8 is the classic
    64-192-384-256-256 AlexNet stack."""
    n_mid = depth - 5
    mid = [384] * max(1, n_mid - 2) + [256] * min(2, n_mid - 1)
    return [(64, 5), (192, 5)] + [(c, 3) for c in mid]


class AlexNet(ModelFamily):
    """AlexNet-like network for small images: depth (weight layers) 6-12, 5x5 then 3x3 convs, Dense 384-192."""

    name = "alexnet"
    version = "1"

    class Params(ConvParams):
        depth: int = Field(8, ge=6, le=12, description="weight layers with the default two hidden "
                           "dense layers: depth-3 convs + 2 dense + output (a custom `dense` "
                           "keeps depth-3 convs)")
        dense: list[int] = Field([384, 192], min_length=1, description="hidden dense units (before width)")
        dropout_placement: Literal["classic", "every"] = Field(
            "classic", description="'classic': on the inputs of the hidden dense layers (as "
            "AlexNet); 'every': after every hidden layer")

    def build(self, input_shape, n_classes):
        p = self.params
        stack = ConvStack(input_shape, p.activation, p.batch_norm, self.name)
        convs = alexnet_convs(p.depth)
        for i, (ch, k) in enumerate(convs):
            pooled = i < 2 or i == len(convs) - 1
            stack.conv(scaled(ch, p.width), k, k // 2, pool=2 if pooled else None)
        fan_in = stack.flatten()
        for units in p.dense:
            stack.dense(fan_in, scaled(units, p.width))
            fan_in = scaled(units, p.width)
        n_conv, n_taps = len(convs), len(stack.taps)
        if p.dropout_placement == "classic":
            # dropout feeds each hidden dense layer: the last conv's output and every
            # hidden dense output except the one feeding the classifier
            scales = [1.0 if i == n_conv - 1 or n_conv <= i < n_taps - 1 else 0.0
                      for i in range(n_taps)]
        else:
            scales = [1.0] * n_taps
        place_dropout(stack.taps, scales)
        model = nn.Sequential(*stack.layers, nn.Linear(fan_in, n_classes))
        return _taps.number_taps(initialize(model, p.init))


@genbench.hookimpl
def register_models(register):
    for cls in (MLP, CNN, VGG, AlexNet):
        register(cls)
