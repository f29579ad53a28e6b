"""MobileNetV3 Large/Small in torchvision's parameter layout (so its state dicts load unchanged).

Block tables and the single builder follow torchvision's ``mobilenetv3.py``. The activations are the original project's
hand-written ``HSigmoid``/``HSwish``: they export to any ONNX opset and to TensorRT as plain relu6/add/mul,
and are numerically identical to ``F.hardsigmoid``/``F.hardswish``.
"""

from dataclasses import dataclass
from typing import Iterable, List, Optional

import torch
from torch import nn
import torch.nn.functional as F

ARCHS = ("large", "small")
BN_EPS = 0.001
BN_MOMENTUM = 0.01


def relu6_hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """The original project's hard sigmoid from plain ops: exports to any ONNX opset and TensorRT version."""
    return F.relu6(x + 3.0) / 6.0


def relu6_hardswish(x: torch.Tensor) -> torch.Tensor:
    # (x * relu6(x + 3)) / 6 in this order is bit-identical to F.hardswish; the original project's x * HSigmoid(x) rounds
    # differently (1 ulp on a quarter of inputs).
    return x * F.relu6(x + 3.0) / 6.0


class HSigmoid(nn.Module):
    """The original project's replacement for F.hardsigmoid: plain ops in ONNX, torch's fused kernel everywhere else
    (bit-identical results, tests/test_model.py; one kernel instead of three matters on a GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu6_hardsigmoid(x) if torch.onnx.is_in_onnx_export() else F.hardsigmoid(x)


class HSwish(nn.Module):
    """The original project's replacement for nn.Hardswish, same split as HSigmoid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu6_hardswish(x) if torch.onnx.is_in_onnx_export() else F.hardswish(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class Block:
    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    use_se: bool
    use_hs: bool  # HSwish, else ReLU
    stride: int


#            in  k  exp  out   SE     HS   stride
LARGE = [
    Block(16, 3, 16, 16, False, False, 1),
    Block(16, 3, 64, 24, False, False, 2),
    Block(24, 3, 72, 24, False, False, 1),
    Block(24, 5, 72, 40, True, False, 2),
    Block(40, 5, 120, 40, True, False, 1),
    Block(40, 5, 120, 40, True, False, 1),
    Block(40, 3, 240, 80, False, True, 2),
    Block(80, 3, 200, 80, False, True, 1),
    Block(80, 3, 184, 80, False, True, 1),
    Block(80, 3, 184, 80, False, True, 1),
    Block(80, 3, 480, 112, True, True, 1),
    Block(112, 3, 672, 112, True, True, 1),
    Block(112, 5, 672, 160, True, True, 2),
    Block(160, 5, 960, 160, True, True, 1),
    Block(160, 5, 960, 160, True, True, 1),
]
SMALL = [
    Block(16, 3, 16, 16, True, False, 2),
    Block(16, 3, 72, 24, False, False, 2),
    Block(24, 3, 88, 24, False, False, 1),
    Block(24, 5, 96, 40, True, True, 2),
    Block(40, 5, 240, 40, True, True, 1),
    Block(40, 5, 240, 40, True, True, 1),
    Block(40, 5, 120, 48, True, True, 1),
    Block(48, 5, 144, 48, True, True, 1),
    Block(48, 5, 288, 96, True, True, 2),
    Block(96, 5, 576, 96, True, True, 1),
    Block(96, 5, 576, 96, True, True, 1),
]
BLOCKS = {"large": (LARGE, 1280), "small": (SMALL, 1024)}  # rows, classifier hidden width


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional activation; keys ``0.weight``, ``1.*`` as torchvision's."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: Optional[type] = None):
        layers: List[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = HSigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    def __init__(self, b: Block):
        super().__init__()
        act = HSwish if b.use_hs else nn.ReLU
        layers: List[nn.Module] = []
        if b.expanded != b.in_ch:
            layers.append(ConvBNAct(b.in_ch, b.expanded, 1, act=act))
        layers.append(ConvBNAct(b.expanded, b.expanded, b.kernel, b.stride, groups=b.expanded, act=act))
        if b.use_se:
            layers.append(SqueezeExcitation(b.expanded, _make_divisible(b.expanded // 4)))
        layers.append(ConvBNAct(b.expanded, b.out_ch, 1))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = b.stride == 1 and b.in_ch == b.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3(nn.Module):
    def __init__(self, arch: str = "large", num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        if arch not in BLOCKS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        rows, hidden = BLOCKS[arch]
        self.arch, self.num_classes = arch, num_classes
        last_in = rows[-1].out_ch
        self.features = nn.Sequential(
            ConvBNAct(3, rows[0].in_ch, 3, stride=2, act=HSwish),
            *(InvertedResidual(b) for b in rows),
            ConvBNAct(last_in, 6 * last_in, 1, act=HSwish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(6 * last_in, hidden),
            HSwish(),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(hidden, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_model(arch: str, num_classes: int, seed: Optional[int] = None) -> MobileNetV3:
    """A model in eval mode. With ``seed``: a reproducible random init whose BatchNorm statistics are
    calibrated on smooth seeded noise (spatially correlated, like photographs), so its logits have the
    spread of a trained model, about +-5..30. torchvision's init alone gives logits around 1e-10, which
    would make every parity check pass trivially; white-noise calibration gives logits in the hundreds."""
    if seed is None:
        return MobileNetV3(arch, num_classes).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MobileNetV3(arch, num_classes)
        for lin in (model.classifier[0], model.classifier[3]):  # unit-variance logits instead of ~0.01
            nn.init.normal_(lin.weight, 0, lin.in_features ** -0.5)
        smooth = F.interpolate(torch.randn(16, 3, 8, 8), size=224, mode="bilinear", align_corners=False)
        recompute_batchnorm(model, [smooth + 0.3 * torch.randn(16, 3, 224, 224)])
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.num_batches_tracked.zero_()
    return model.eval()


def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], skip: Optional[nn.Module] = None) -> int:
    """"Precise BN": set every BatchNorm's running statistics (except those inside ``skip``) to the average of
    its per-batch statistics over ``batches`` (momentum None: a cumulative average, not an exponential one), the
    rest of the model in eval mode. The momentum-0.01 averages of training have seen too few batches to be right
    on small data; these are what the eval-mode model then uses. Returns the number of images seen."""
    frozen = set(skip.modules()) if skip is not None else set()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m not in frozen]
    if not bns:
        return 0
    was_training, momenta = model.training, [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                seen += len(x)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return seen
