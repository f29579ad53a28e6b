"""Model: torchvision's layout, the original project's activations identical to torch's, BN settings, class count."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnv3kit.model import (ARCHS, BN_EPS, BN_MOMENTUM, HSigmoid, HSwish, MobileNetV3, build_model,
                           recompute_batchnorm, relu6_hardsigmoid, relu6_hardswish)

LAYOUT = json.loads((Path(__file__).parent / "data" / "torchvision_layout.json").read_text())


def activation_inputs():
    torch.manual_seed(0)
    edges = torch.tensor([-3.0, 3.0, -3.0 - 1e-6, -3.0 + 1e-6, 3.0 - 1e-6, 3.0 + 1e-6, 0.0, -0.0, -1e4, 1e4])
    return torch.cat([torch.randn(100_000) * 4, torch.linspace(-4, 4, 10_001), edges])


@pytest.mark.parametrize("ours, theirs", [(relu6_hardsigmoid, F.hardsigmoid), (relu6_hardswish, F.hardswish),
                                         (HSigmoid(), F.hardsigmoid), (HSwish(), F.hardswish)])
def test_activations_identical_to_torch(ours, theirs):
    """The original project's relu6 forms (what ONNX gets) and the modules are bit-identical to torch's activations."""
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


def test_recompute_batchnorm_averages_the_batch_statistics():
    """Precise BN: each running mean/var becomes the average of the per-batch statistics (first layer checked
    against a direct computation); BatchNorms under ``skip`` keep theirs; momentum and mode are restored."""
    model = build_model("small", 3, seed=0).train()
    skipped = [m for m in model.features[-1].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in skipped]
    torch.manual_seed(1)
    batches = [torch.rand(4, 3, 64, 64) * 2 - 1 for _ in range(3)]
    assert recompute_batchnorm(model, batches, skip=model.features[-1]) == 12
    conv, bn = model.features[0][0], model.features[0][1]
    with torch.no_grad():
        outs = [conv(x) for x in batches]
    torch.testing.assert_close(bn.running_mean, torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([o.var((0, 2, 3)) for o in outs]).mean(0))
    assert all(torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b) in zip(skipped, before))
    assert bn.momentum == BN_MOMENTUM and model.training


def test_bad_arch_and_classes():
    with pytest.raises(ValueError):
        MobileNetV3("medium")
    with pytest.raises(ValueError):
        MobileNetV3("large", num_classes=0)
