"""ResNet built from torch.nn, layer for layer torchvision's ``resnet18/34/50/101/152``.

torchvision is not installed in this project's environment, so the architecture is written
out here with torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv2``,
``layer1.0.downsample.0``, ``fc``...), its stride placement (ResNet v1.5: the stride of a
bottleneck is on its 3x3 conv) and its initialisation (Kaiming normal, fan_out, for convs;
BatchNorm weight 1, bias 0). A torchvision ResNet state dict therefore loads into it as is
(``--init-weights``), and ``resnet(50, num_classes=1000)`` has torchvision's 25,557,032
parameters. ``width`` scales every stage (64 is the real network) for CPU tests.
"""

from __future__ import annotations

import torch
from torch import nn

# depth -> (block, blocks per stage)
LAYOUTS: dict[int, tuple[str, list[int]]] = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + idt)
        return result


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # v1.5: the stride is here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + idt)
        return result


class ResNet(nn.Module):
    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        width: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(LAYOUTS)}, got {depth}")
        kind, counts = LAYOUTS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, width, counts[0], 1)
        self.layer2 = self._stage(block, width * 2, counts[1], 2)
        self.layer3 = self._stage(block, width * 4, counts[2], 2)
        self.layer4 = self._stage(block, width * 8, counts[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # the last BN of each residual branch starts at 0
            for m in self.modules():
                last = m.bn3 if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, BasicBlock | Bottleneck) and last is not None:
                    nn.init.constant_(last.weight, 0)

    def _stage(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


def resnet(
    depth: int, num_classes: int, width: int = 64, zero_init_residual: bool = False
) -> ResNet:
    """A randomly initialised ResNet (seed the torch RNG first for a reproducible init)."""
    return ResNet(depth, num_classes, width, zero_init_residual)
