"""Classifier backbones: CIFAR-style ResNet-20/32/56 and small-image variants of torchvision's ResNet.

Every model takes images in [-1, 1] (the project's model range), ``[B, C, H, W]`` with any C and any
H = W the data layer produces, and applies its own per-channel input normalisation (buffers
``in_mean`` / ``in_std``, set from the training data and saved in the state_dict). So the diffusion
side (AID loss, minority guidance) can call ``model.features(x)`` on ``x`` in [-1, 1] directly.

``model.features(x) -> [B, D]`` are the penultimate (globally pooled) features; ``model(x) -> [B, K]``
the logits; ``model.feature_dim`` is D. With ``ModelSpec.normed_linear`` (``classifier.method=ldam_drw``)
the last layer is :class:`NormedLinear` and the logits are cosines in [-1, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InputNorm(nn.Module):
    """Per-channel ``(x - mean) / std`` on inputs in [-1, 1]; the statistics are buffers (saved, loaded)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def set_stats(self, x: Tensor) -> None:  # x [N,C,H,W] in [-1, 1]
        """Set mean / std from training images (per channel)."""
        self.mean.copy_(x.float().mean(dim=(0, 2, 3)).view_as(self.mean).to(self.mean))
        self.std.copy_(x.float().std(dim=(0, 2, 3)).clamp_min(1e-3).view_as(self.std).to(self.std))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class NormedLinear(nn.Module):
    """Cosine last layer of LDAM (Cao et al. 2019; ``NormedLinear`` in kaidic/LDAM-DRW):
    ``z_j = <phi / ||phi||, w_j / ||w_j||>``, no bias; the loss applies the scale s."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))  # [K, D]
        with torch.no_grad():   # uniform directions, unit rows (the reference's uniform(-1, 1) + renorm)
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, x: Tensor) -> Tensor:  # x [B, D] -> cosines [B, K]
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class Classifier(nn.Module):
    """Shared interface: ``norm`` -> ``body`` (-> [B, D] features) -> ``fc`` (-> [B, K] logits)."""

    feature_dim: int

    def features(self, x: Tensor) -> Tensor:  # x [B,C,H,W] in [-1, 1] -> phi(x) [B, D]
        return self.body(self.norm(x))

    def forward(self, x: Tensor) -> Tensor:  # -> logits [B, K]
        return self.fc(self.features(x))


# --------------------------------------------------------------------------------------------------
# CIFAR ResNet: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2
# (6n+2 layers, widths 16/32/64, option-A identity shortcuts; ResNet-32 = 0.46M parameters). This is
# the backbone of the CIFAR-LT literature (LDAM-DRW, Cao et al. 2019; DiffuLT, Shao et al. 2024).
# --------------------------------------------------------------------------------------------------


class _ShortcutA(nn.Module):
    """Option A: subsample spatially and zero-pad the channels (no parameters)."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.norm = InputNorm(in_channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        in_planes = width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(CifarBasicBlock(in_planes, planes, stride))
                in_planes = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)


# --------------------------------------------------------------------------------------------------
# ImageNet-style ResNet-10/18/50 from torchvision's builder (He et al. 2016, Table 1; ResNet-10 is the
# ImageNet-LT backbone of Liu et al. 2019 and DiffuLT). For small inputs (<= 64 px) the stem is the
# CIFAR one: a 3x3 stride-1 conv and no max-pool, so a 32x32 image keeps a 4x4 map before pooling.
# --------------------------------------------------------------------------------------------------

SMALL_IMAGE_MAX = 64  # inputs up to this side length get the 3x3 / no-maxpool stem


class TorchvisionResNet(Classifier):
    def __init__(self, block: str, layers: tuple[int, ...], num_classes: int, in_channels: int = 3,
                 image_size: int = 32) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        net = ResNet(BasicBlock if block == "basic" else Bottleneck, list(layers), num_classes=num_classes)
        if image_size <= SMALL_IMAGE_MAX:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.norm = InputNorm(in_channels)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                                  net.layer3, net.layer4, net.avgpool, nn.Flatten())
        self.feature_dim = net.fc.in_features
        self.fc = net.fc


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier (saved in the checkpoint's ``extra``)."""

    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    width: int = 16
    normed_linear: bool = False   # cosine last layer (LDAM)

    def to_dict(self) -> dict:
        return asdict(self)


Builder = Callable[[ModelSpec], Classifier]

ARCHS: dict[str, Builder] = {
    "resnet20": lambda s: CifarResNet(20, s.num_classes, s.in_channels, s.width),
    "resnet32": lambda s: CifarResNet(32, s.num_classes, s.in_channels, s.width),
    "resnet56": lambda s: CifarResNet(56, s.num_classes, s.in_channels, s.width),
    "resnet10": lambda s: TorchvisionResNet("basic", (1, 1, 1, 1), s.num_classes, s.in_channels, s.image_size),
    "resnet18": lambda s: TorchvisionResNet("basic", (2, 2, 2, 2), s.num_classes, s.in_channels, s.image_size),
    "resnet50": lambda s: TorchvisionResNet("bottleneck", (3, 4, 6, 3), s.num_classes, s.in_channels, s.image_size),
}


def build_classifier(spec: ModelSpec) -> Classifier:
    if spec.arch not in ARCHS:
        raise ValueError(f"unknown classifier arch {spec.arch!r}; choose one of {sorted(ARCHS)}")
    model = ARCHS[spec.arch](spec)
    if spec.normed_linear:
        model.fc = NormedLinear(model.feature_dim, spec.num_classes)
    return model


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
