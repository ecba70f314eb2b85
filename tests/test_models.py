"""Model families: the paper's layouts (Tables 3, 5-7), taps at every hidden layer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genbench import taps
from genbench.plugins import get_registry
from genbench.taps import Tap


def build(family, input_shape, n_classes=10, **params):
    cls = get_registry().get("model", family).cls
    return cls(cls.Params(**params)).build(input_shape, n_classes)


def weights(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def sequence(model):
    """The model's leaf-level layers in order (a Tap counts as one)."""
    out = []
    for m in model.children():
        out.append(m)
    return out


def assert_every_hidden_layer_ends_in_a_tap(model):
    layers = sequence(model)
    weight_idx = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    for a, b in zip(weight_idx, weight_idx[1:]):
        between = layers[a + 1:b]
        assert sum(isinstance(m, Tap) for m in between) == 1, between
    assert not any(isinstance(m, Tap) for m in layers[weight_idx[-1]:])  # the output layer has none
    assert [t.index for t in taps.taps(model)] == list(range(len(weight_idx) - 1))


CASES = [
    ("mlp", (1, 8, 8), {}),
    ("cnn", (1, 28, 28), {}),
    ("cnn", (1, 40), {}),
    ("vgg", (3, 32, 32), {"depth": 11, "width": 0.25}),
    ("vgg", (3, 32, 32), {"depth": 19, "width": 0.125, "batch_norm": True}),
    ("alexnet", (3, 32, 32), {"depth": 7, "width": 0.25}),
    ("alexnet", (3, 32, 32), {"depth": 10, "width": 0.125, "batch_norm": True}),
]


@pytest.mark.parametrize("family,shape,params", CASES)
def test_families_classify_and_tap_every_hidden_layer(family, shape, params):
    model = build(family, shape, 7, **params)
    assert model(torch.randn(3, *shape)).shape == (3, 7)
    assert_every_hidden_layer_ends_in_a_tap(model)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == params.get("batch_norm", False)


def test_cnn_is_table_3():
    """Conv-64-(3,3) Conv-128-(3,3) MaxPool-(7,7) Dense-128 Dense-out (Keras 'valid' convs)."""
    model = build("cnn", (1, 28, 28))
    conv1, conv2, dense, out = weights(model)
    assert (conv1.out_channels, conv2.out_channels, conv1.kernel_size) == (64, 128, (3, 3))
    pool = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pool) == 1 and pool[0].kernel_size == 7
    assert dense.in_features == 128 * 3 * 3 and dense.out_features == 128  # 28 -> 26 -> 24 -> 3
    assert out.out_features == 10
    assert [t.dropout_scale for t in taps.taps(model)] == [0, 0, 1]  # Dropout-0.3 after Dense-128
    figure1 = build("cnn", (1, 28, 28), dense=[128, 2])  # Figure 1's 2-unit feature layer
    assert [t.dropout_scale for t in taps.taps(figure1)] == [0, 0, 1, 0]  # no dropout after Dense-2
    one_d = build("cnn", (1, 40))
    c1, _, d, _ = weights(one_d)
    assert isinstance(c1, nn.Conv1d) and d.in_features == 128 * 5  # 40 -> 38 -> 36 -> 5
    fig1 = build("cnn", (1, 28, 28), dense=[128, 2])
    assert weights(fig1)[3].out_features == 2  # Figure 1's 2-unit feature layer


VGG_TABLES = {
    # the paper's Tables 5-7, layer by layer (D = dropout rate after the layer at rate 0.3)
    11: "64 M 128 M 256 D.3 256 M 512 D.3 512 M 512 D.3 512 M D.1 Dense D.1",
    16: "64 D.3 64 M 128 D.3 128 M 256 D.3 256 D.3 256 M 512 D.3 512 D.3 512 M 512 D.3 512 D.3 "
        "512 M D.1 Dense D.1",
    19: "64 D.3 64 M 128 D.3 128 M 256 D.3 256 D.3 256 D.3 256 M 512 D.3 512 D.3 512 D.3 512 M "
        "512 D.3 512 D.3 512 D.3 512 M D.1 Dense D.1",
}


def table_to_layers(text):
    """[(channels or 'dense', pooled, dropout rate)] per hidden layer from a table string."""
    layers = []
    for tok in text.split():
        if tok == "M":
            layers[-1][1] = True
        elif tok.startswith("D."):
            layers[-1][2] = float(tok[1:])
        else:
            layers.append([tok if tok == "Dense" else int(tok), False, 0.0])
    return layers


@pytest.mark.parametrize("depth", [11, 16, 19])
@pytest.mark.parametrize("width", [1.0, 0.5])
def test_vgg_is_tables_5_to_7(depth, width):
    model = build("vgg", (3, 32, 32), depth=depth, width=width)
    table = table_to_layers(VGG_TABLES[depth])
    convs = [m for m in weights(model) if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [int(ch * width) for ch, _, _ in table[:-1]]
    assert all(c.kernel_size == (3, 3) for c in convs)
    tap_list = taps.taps(model)
    pooled = [any(isinstance(m, nn.MaxPool2d) for m in t.modules()) for t in tap_list]
    assert pooled == [p for _, p, _ in table]
    rates = [round(0.3 * t.dropout_scale, 6) for t in tap_list]
    assert rates == [r for _, _, r in table]
    dense, out = weights(model)[-2:]
    assert dense.in_features == int(512 * width) and dense.out_features == int(512 * width)
    assert out.out_features == 10
    if width == 1.0 and depth == 16:  # width 1: 64-128-256-512-512 (paper footnote 3)
        assert sorted({c.out_channels for c in convs}) == [64, 128, 256, 512]


def test_vgg_every_placement_and_tiny_inputs_skip_impossible_pools():
    model = build("vgg", (1, 8, 8), depth=16, width=1 / 16, dropout_placement="every")
    assert all(t.dropout_scale == 1.0 for t in taps.taps(model))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # 8 -> 4 -> 2 -> 1, then no pool


@pytest.mark.parametrize("depth", [6, 7, 8, 9, 10, 12])
def test_alexnet_depth_counts_weight_layers(depth):
    model = build("alexnet", (3, 32, 32), depth=depth, width=0.25)
    layers = weights(model)
    assert len(layers) == depth
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert len(convs) == depth - 3
    assert [c.kernel_size[0] for c in convs[:2]] == [5, 5] and all(c.kernel_size[0] == 3 for c in convs[2:])
    assert [m.out_features for m in layers[-3:]] == [96, 48, 10]  # Dense 384-192 at width 1/4
    scales = [t.dropout_scale for t in taps.taps(model)]
    # classic placement: dropout on the inputs of the two hidden dense layers
    assert scales == [0.0] * (depth - 4) + [1.0, 1.0, 0.0]
    if depth == 8:  # the classic 64-192-384-256-256 stack
        assert [c.out_channels for c in convs] == [16, 48, 96, 64, 64]


def test_width_multiplier_scales_every_hidden_layer():
    full, half = build("alexnet", (3, 32, 32), depth=9), build("alexnet", (3, 32, 32), depth=9, width=0.5)
    for a, b in zip(weights(full)[:-1], weights(half)[:-1]):
        out_a = a.out_channels if isinstance(a, nn.Conv2d) else a.out_features
        out_b = b.out_channels if isinstance(b, nn.Conv2d) else b.out_features
        assert out_b == out_a // 2


def test_glorot_init_is_keras_default():
    model = build("vgg", (3, 32, 32), depth=11, width=0.25)
    for m in weights(model):
        fan_in = m.weight[0].numel()
        fan_out = m.weight.shape[0] * (m.weight[0, 0].numel() if m.weight.dim() > 2 else 1)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    torch_default = build("vgg", (3, 32, 32), depth=11, width=0.25, init="torch")
    assert not torch.equal(weights(torch_default)[0].bias, torch.zeros_like(weights(torch_default)[0].bias))


def test_convolutional_families_reject_flat_inputs_clearly():
    with pytest.raises(ValueError, match="layout='channels'"):
        build("cnn", (40,))
