"""Model: torchvision's layout, the seed's activations identical to torch's, BN settings, class count."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnv3kit.model import (ARCHS, BN_EPS, BN_MOMENTUM, HSigmoid, HSwish, MobileNetV3, build_model, relu6_hardsigmoid,
                           relu6_hardswish)

LAYOUT = json.loads((Path(__file__).parent / "data" / "torchvision_layout.json").read_text())


def activation_inputs():
    torch.manual_seed(0)
    edges = torch.tensor([-3.0, 3.0, -3.0 - 1e-6, -3.0 + 1e-6, 3.0 - 1e-6, 3.0 + 1e-6, 0.0, -0.0, -1e4, 1e4])
    return torch.cat([torch.randn(100_000) * 4, torch.linspace(-4, 4, 10_001), edges])


@pytest.mark.parametrize("ours, theirs", [(relu6_hardsigmoid, F.hardsigmoid), (relu6_hardswish, F.hardswish),
                                         (HSigmoid(), F.hardsigmoid), (HSwish(), F.hardswish)])
def test_activations_identical_to_torch(ours, theirs):
    """The seed's relu6 forms (what ONNX gets) and the modules are bit-identical to torch's activations."""
    x = activation_inputs()
    assert torch.equal(ours(x), theirs(x))
    # saturation points: 0 and 1 for hardsigmoid, 0 and x for hardswish
    y = ours(torch.tensor([-3.0, 3.0, -5.0, 5.0]))
    expected = theirs(torch.tensor([-3.0, 3.0, -5.0, 5.0]))
    assert torch.equal(y, expected)


def test_hardsigmoid_saturates_exactly():
    assert relu6_hardsigmoid(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]
    assert relu6_hardswish(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 3.0]


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_layout_matches_torchvision(arch):
    """Keys and shapes equal torchvision's own mobilenet_v3_* (recorded in tests/data from torchvision 0.29.1)."""
    ours = {k: list(v.shape) for k, v in MobileNetV3(arch, 1000).state_dict().items()}
    assert ours == LAYOUT[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_batchnorm_settings_and_classes(arch):
    model = MobileNetV3(arch, num_classes=7)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == BN_EPS == 0.001 and bn.momentum == BN_MOMENTUM == 0.01 for bn in bns)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 224, 224)).shape == (2, 7)


def test_seeded_init_is_deterministic_and_not_degenerate():
    a, b = build_model("small", 5, seed=0), build_model("small", 5, seed=0)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert torch.equal(ya, yb)
    assert ya.std() > 0.1  # realistic logits, so parity checks mean something
    assert not torch.equal(ya, build_model("small", 5, seed=1)(x))


def test_bad_arch_and_classes():
    with pytest.raises(ValueError):
        MobileNetV3("medium")
    with pytest.raises(ValueError):
        MobileNetV3("large", num_classes=0)
