"""PyTorch twins of three GluonCV classifiers, in plain torch (no torchvision).

torchvision does not import with the CPU torch wheel the benchmark venv
installs, so the networks are written here with torchvision's module names
(``resnet50``: He et al. 2016, https://arxiv.org/abs/1512.03385;
``mobilenet_v2``: Sandler et al. 2018, https://arxiv.org/abs/1801.04381) and,
for GluonCV's CIFAR ResNet-20 v1, with GluonCV's own names. ``weight_port.py``
maps GluonCV parameter names onto these ``state_dict`` keys; :func:`load_twin`
builds a twin, fills it and wraps it with the input normalisation, so it takes
pixels in ``[0, 1]`` like a gluon_robust ``Classifier``.

Used by ``bench_vs_torch.py`` (and meant for other torch-side benchmarks).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from weight_port import port

__all__ = ["CifarResNet20V1", "ResNet50", "MobileNetV2", "Normalised", "build_twin", "load_twin", "port_targets"]


class _CifarBlock(nn.Module):
    """GluonCV ``CIFARBasicBlockV1``: conv-BN-ReLU-conv-BN plus the (projected) input, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(self.body(x) + residual)


class CifarResNet20V1(nn.Module):
    """GluonCV ``cifar_resnet20_v1`` (no ReLU after the stem's BatchNorm, as in GluonCV)."""

    def __init__(self, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)]
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            blocks = [_CifarBlock(cin, cout, 1 if stage == 0 else 2)] + [_CifarBlock(cout, cout, 1) for _ in range(2)]
            layers.append(nn.Sequential(*blocks))
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.output = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.flatten(self.features(x), 1))


class _Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv; GluonCV ``BottleneckV1b``)."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet50(nn.Module):
    """torchvision ``resnet50`` (= GluonCV ``resnet50_v1b``)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for index, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), 1):
            layer = [_Bottleneck(cin, width, stride)] + [_Bottleneck(4 * width, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))
            cin = 4 * width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class _InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: [1x1 expand] - 3x3 depthwise - 1x1 project, identity when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: List[nn.Module] = [] if expand == 1 else [_conv_bn_relu6(cin, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision ``mobilenet_v2`` at width 1.0 (= GluonCV ``mobilenetv2_1.0``)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: List[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(_InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class Normalised(nn.Module):
    """``net((x - mean) / std)``: pixels in, class scores out (a gluon_robust ``Classifier``'s contract)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_twin(arch: str, in_channels: int = 3, classes: int = 1000) -> nn.Module:
    """An uninitialised twin of GluonCV ``arch``."""
    if arch == "cifar_resnet20_v1":
        return CifarResNet20V1(in_channels, classes)
    if arch == "resnet50_v1b":
        return ResNet50(classes)
    if arch == "mobilenetv2_1.0":
        return MobileNetV2(classes)
    raise KeyError(f"no torch twin for {arch!r}")


def port_targets(net: nn.Module) -> Dict[str, tuple]:
    """The twin's ``state_dict`` keys to fill, with shapes (BatchNorm's step counters left out)."""
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def load_twin(arch: str, gluon: Dict[str, np.ndarray], mean: Sequence[float], std: Sequence[float],
              in_channels: int = 3, classes: int = 1000) -> Normalised:
    """A twin filled with GluonCV weights (structural name -> array), normalising, in eval mode, frozen."""
    net = build_twin(arch, in_channels, classes)
    values = port(arch, gluon, port_targets(net))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=False)
    model = Normalised(net, mean, std).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
