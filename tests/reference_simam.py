"""Minimal re-implementations of the original SimAM code's networks, for checkpoint-compatibility tests.

The original code (github.com/ZjjConan/SimAM, `networks/`) put each attention module inside an
`nn.Sequential` wrapper together with the layer it follows, so its checkpoints have keys such as
`layer1.0.conv2.0.weight` (SimAM behind the 3x3 conv), `layer1.0.bn2.1.fc.0.weight` (SE behind
the last BN) or `features.2.conv.1.2.weight` (MobileNetV2: the depthwise BN behind SimAM). The
models below reproduce that module layout and that forward computation, written from a reading
of the original code (not copied), and nothing else: no initialisation scheme (the tests set
random weights and BN statistics) and no options beyond those the tests need.

Attention modules are the original ones: SimAM with its 1/(H*W-1) variance, SE with bias-free
`fc.0`/`fc.2`, CBAM with `ChannelGate.mlp.{1,3}` (biases) and `SpatialGate.spatial.{conv,bn}`.
`build_reference(name, num_classes, attention, param)` builds a network under our registry name.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REFERENCE_MODELS", "Opaque", "build_reference", "make_attention"]


# ----------------------------------------------------------------------------- attention modules
class SimAM(nn.Module):
    """y = x * sigmoid((x - mu)^2 / (4 * (sum((x - mu)^2) / (H*W - 1) + lambda)) + 0.5)."""

    def __init__(self, channels: Optional[int] = None, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        return x * torch.sigmoid(d / (4 * (d.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda)) + 0.5)


class SE(nn.Module):
    """Squeeze-excitation with bias-free fully connected layers (`fc.0`, `fc.2`)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True), nn.Linear(hidden, channels, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1)


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.mlp = nn.Sequential(_Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        att = self.mlp(F.avg_pool2d(x, size, stride=size)) + self.mlp(F.max_pool2d(x, size, stride=size))
        return x * torch.sigmoid(att).unsqueeze(2).unsqueeze(3).expand_as(x)


class _SpatialConv(nn.Module):
    """The original `BasicConv(2, 1, 7, relu=False)`: conv (no bias) then BN (momentum 0.01)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class _SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Channel gate (avg + max through a shared MLP with biases), then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = _ChannelGate(channels, reduction)
        self.SpatialGate = _SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


_ATTENTIONS: dict[str, Optional[Callable[..., nn.Module]]] = {"none": None, "simam": SimAM, "se": SE, "cbam": CBAM}


def make_attention(attention: str, param: Optional[float] = None) -> Optional[Callable[[int], nn.Module]]:
    """`f(channels)` building the original module (param: SimAM lambda or SE/CBAM reduction)."""
    cls = _ATTENTIONS[attention]
    if cls is None:
        return None
    if param is None:
        return cls
    key = "e_lambda" if cls is SimAM else "reduction"
    return lambda channels: cls(channels, **{key: param})


def _wrap(layer: nn.Module, attn: Optional[Callable[[int], nn.Module]], channels: int) -> nn.Module:
    """The original's `nn.Sequential(layer, attention(channels))`, or the layer alone."""
    return layer if attn is None else nn.Sequential(layer, attn(channels))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


# ----------------------------------------------------------------------------- ImageNet ResNet family
class ImageNetBlock(nn.Module):
    """torchvision v1.5 basic/bottleneck block; SimAM wraps conv2, SE/CBAM wrap the last BN."""

    def __init__(self, bottleneck: bool, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module],
                 groups: int, base_width: int, attention: str, attn: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        out = planes * (4 if bottleneck else 1)
        width = int(planes * (base_width / 64.0)) * groups if bottleneck else planes
        if bottleneck:
            self.conv1, self.bn1 = _conv(inplanes, width, 1), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = _conv(width, width, 3, stride, groups), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = _conv(width, out, 1), nn.BatchNorm2d(out)
        else:
            self.conv1, self.bn1 = _conv(inplanes, planes, 3, stride), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = _conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        if attention == "simam":
            self.conv2 = _wrap(self.conv2, attn, width)
        elif bottleneck:
            self.bn3 = _wrap(self.bn3, attn, out)
        else:
            self.bn2 = _wrap(self.bn2, attn, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ImageNetResNet(nn.Module):
    """ResNet / ResNeXt / ResNet-D (deep stem, average-pool downsampling) of the original code."""

    def __init__(self, bottleneck: bool, layers: list[int], num_classes: int, attention: str, param: Optional[float],
                 groups: int = 1, width_per_group: int = 64, deep_stem: bool = False, stem_width: int = 32,
                 avg_down: bool = False) -> None:
        super().__init__()
        attn = make_attention(attention, param)
        self.inplanes = stem_width * 2 if deep_stem else 64
        if deep_stem:
            self.conv1 = nn.Sequential(
                _conv(3, stem_width, 3, 2), nn.BatchNorm2d(stem_width), nn.ReLU(),
                _conv(stem_width, stem_width, 3), nn.BatchNorm2d(stem_width), nn.ReLU(),
                _conv(stem_width, self.inplanes, 3),
            )
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        expansion = 4 if bottleneck else 1
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            out = planes * expansion
            downsample = None
            if stride != 1 or self.inplanes != out:
                if avg_down and stride != 1:
                    downsample = nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                                               _conv(self.inplanes, out, 1), nn.BatchNorm2d(out))
                else:
                    downsample = nn.Sequential(_conv(self.inplanes, out, 1, stride), nn.BatchNorm2d(out))
            blocks = []
            for j in range(n):
                blocks.append(ImageNetBlock(bottleneck, self.inplanes, planes, stride if j == 0 else 1,
                                            downsample if j == 0 else None, groups, width_per_group, attention, attn))
                self.inplanes = out
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- ImageNet MobileNetV2
def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, simam: Optional[nn.Module] = None) -> nn.Sequential:
    """Conv, [SimAM], BN, ReLU6: SimAM shifts the BN to index 2."""
    layers = [_conv(cin, cout, k, stride, groups)] + ([simam] if simam is not None else [])
    return nn.Sequential(*layers, nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class ImageNetInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, t: int, attention: str, attn: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        hidden = int(round(inp * t))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [_conv_bn_relu(inp, hidden, 1)] if t != 1 else []
        simam = attn(hidden) if attention == "simam" else None
        layers += [_conv_bn_relu(hidden, hidden, 3, stride, hidden, simam), _conv(hidden, oup, 1), nn.BatchNorm2d(oup)]
        if attn is not None and attention != "simam":
            layers.append(attn(oup))  # appended as the last element of `conv`
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class ImageNetMobileNetV2(nn.Module):
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, attention: str, param: Optional[float]) -> None:
        super().__init__()
        attn = make_attention(attention, param)
        features: list[nn.Module] = [_conv_bn_relu(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(ImageNetInvertedResidual(cin, c, s if i == 0 else 1, t, attention, attn))
                cin = c
        features.append(_conv_bn_relu(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Linear(1280, num_classes))  # the original commented out the dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(F.adaptive_avg_pool2d(x, (1, 1)).reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------- CIFAR ResNet / PreResNet
class CifarBlock(nn.Module):
    """The four CIFAR blocks of the original `block.py`, chosen by (pre-activation, bottleneck).

    Post-activation: SimAM wraps conv2, SE/CBAM wrap the last BN. Pre-activation basic: any
    attention wraps conv2. Pre-activation bottleneck: SimAM wraps conv2, SE/CBAM wrap conv3.
    Shortcut: 1x1 conv (+ BN in post-activation blocks) where the shape changes.
    """

    def __init__(self, pre: bool, bottleneck: bool, cin: int, c: int, stride: int, attention: str,
                 attn: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.pre = pre
        out = c * (4 if bottleneck else 1)
        if bottleneck:
            convs = [_conv(cin, c, 1), _conv(c, c, 3, stride), _conv(c, out, 1)]
        else:
            convs = [_conv(cin, c, 3, stride), _conv(c, out, 3)]
        self.n = len(convs)
        self.relu = nn.ReLU(inplace=True)
        for i, conv in enumerate(convs, 1):
            bn_channels = conv.in_channels if pre else conv.out_channels
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", nn.BatchNorm2d(bn_channels))
        if attention == "simam" or (pre and not bottleneck):
            self.conv2 = _wrap(self.conv2, attn, out)  # channels ignored by SimAM
        elif pre:
            self.conv3 = _wrap(self.conv3, attn, out)
        else:
            last = f"bn{self.n}"
            setattr(self, last, _wrap(getattr(self, last), attn, out))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(_conv(cin, out, 1, stride), *([] if pre else [nn.BatchNorm2d(out)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.n + 1):
            conv, bn = getattr(self, f"conv{i}"), getattr(self, f"bn{i}")
            if self.pre:
                out = conv(self.relu(bn(out)))
            else:
                out = bn(conv(out))
                if i < self.n:
                    out = self.relu(out)
        if self.pre:
            return out + self.shortcut(x)
        out += self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """ResNet (`bn1` after the stem) or PreResNet (`bn` before the head) for 32x32 inputs."""

    def __init__(self, pre: bool, bottleneck: bool, n: int, num_classes: int, attention: str, param: Optional[float]) -> None:
        super().__init__()
        attn = make_attention(attention, param)
        self.pre = pre
        expansion = 4 if bottleneck else 1
        self.conv1 = _conv(3, 16, 3)
        if not pre:
            self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        cin = 16
        for i, c in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(pre, bottleneck, cin, c, (1 if i == 0 else 2) if j == 0 else 1, attention, attn))
                cin = c * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        if pre:
            self.bn = nn.BatchNorm2d(64 * expansion)
        self.linear = nn.Linear(64 * expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x) if self.pre else self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        if self.pre:
            out = self.relu(self.bn(out))
        out = self.avgpool(out)
        return self.linear(out.view(out.size(0), -1))


# ----------------------------------------------------------------------------- CIFAR WRN
class WideBlock(nn.Module):
    """Pre-activation wide block; any attention wraps conv2. Width-changing blocks feed the
    pre-activated input (not the raw one) to `convShortcut` -- the original's quirk."""

    def __init__(self, cin: int, cout: int, stride: int, drop: float, attn: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.bn1, self.relu1, self.conv1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True), _conv(cin, cout, 3, stride)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        self.conv2 = _wrap(_conv(cout, cout, 3), attn, cout)
        self.droprate = drop
        self.equalInOut = cin == cout
        self.convShortcut = None if self.equalInOut else _conv(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        if not self.equalInOut:
            x = act
        out = self.relu2(self.bn2(self.conv1(act)))
        out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class _NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int, drop: float, attn: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop, attn) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, attention: str, param: Optional[float], drop: float = 0.3) -> None:
        super().__init__()
        attn = make_attention(attention, param)
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = _conv(3, ch[0], 3)
        self.block1 = _NetworkBlock(n, ch[0], ch[1], 1, drop, attn)
        self.block2 = _NetworkBlock(n, ch[1], ch[2], 2, drop, attn)
        self.block3 = _NetworkBlock(n, ch[2], ch[3], 2, drop, attn)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.avg_pool2d(self.relu(self.bn1(out)), 8)
        return self.fc(out.view(-1, self.nChannels))


# ----------------------------------------------------------------------------- CIFAR MobileNetV2
class CifarInvertedResidual(nn.Module):
    """Always expands (even t=1); SimAM wraps the depthwise conv2, SE/CBAM wrap bn3; residual only at stride 1."""

    def __init__(self, cin: int, cout: int, t: int, stride: int, attention: str, attn: Optional[Callable[[int], nn.Module]]) -> None:
        super().__init__()
        self.stride = stride
        planes = t * cin
        self.conv1, self.bn1 = _conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride, planes), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = _conv(planes, cout, 1), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if attention == "simam":
            self.conv2 = _wrap(self.conv2, attn, planes)
        else:
            self.bn3 = _wrap(self.bn3, attn, cout)
        self.shortcut = nn.Sequential()
        if stride == 1 and cin != cout:
            self.shortcut = nn.Sequential(_conv(cin, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class CifarMobileNetV2(nn.Module):
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int, attention: str, param: Optional[float]) -> None:
        super().__init__()
        attn = make_attention(attention, param)
        self.conv1, self.bn1 = _conv(3, 32, 3), nn.BatchNorm2d(32)
        layers, cin = [], 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(CifarInvertedResidual(cin, c, t, s if i == 0 else 1, attention, attn))
                cin = c
        self.layers = nn.Sequential(*layers)
        self.conv2, self.bn2 = _conv(320, 1280, 1), nn.BatchNorm2d(1280)
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(self.layers(out))))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


# ----------------------------------------------------------------------------- registry
# our registry name -> builder(num_classes, attention, param); CIFAR depths as in the original
# (ResNet-164 bottleneck: 18 blocks per stage, PreResNet-56 basic: 9, PreResNet-20 bottleneck: 3)
REFERENCE_MODELS: dict[str, Callable[[int, str, Optional[float]], nn.Module]] = {
    "resnet18": lambda k, a, p: ImageNetResNet(False, [2, 2, 2, 2], k, a, p),
    "resnet50": lambda k, a, p: ImageNetResNet(True, [3, 4, 6, 3], k, a, p),
    "resnext50_32x4d": lambda k, a, p: ImageNetResNet(True, [3, 4, 6, 3], k, a, p, groups=32, width_per_group=4),
    "resnet50d": lambda k, a, p: ImageNetResNet(True, [3, 4, 6, 3], k, a, p, deep_stem=True, stem_width=32, avg_down=True),
    "mobilenet_v2": lambda k, a, p: ImageNetMobileNetV2(k, a, p),
    "cifar_resnet20": lambda k, a, p: CifarResNet(False, False, 3, k, a, p),
    "cifar_resnet164": lambda k, a, p: CifarResNet(False, True, 18, k, a, p),
    "cifar_preresnet56": lambda k, a, p: CifarResNet(True, False, 9, k, a, p),
    "cifar_preresnet20_bottleneck": lambda k, a, p: CifarResNet(True, True, 3, k, a, p),
    "cifar_wrn16_8": lambda k, a, p: WideResNet(16, 8, k, a, p),
    "cifar_mobilenetv2": lambda k, a, p: CifarMobileNetV2(k, a, p),
}


def build_reference(name: str, num_classes: int, attention: str = "none", param: Optional[float] = None) -> nn.Module:
    """The original code's network `name` (our registry's name) with `attention` ("none", "simam", "se", "cbam")."""
    if name not in REFERENCE_MODELS:
        raise ValueError(f"no reference for {name!r}; valid: {', '.join(sorted(REFERENCE_MODELS))}")
    if attention not in _ATTENTIONS:
        raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(sorted(_ATTENTIONS))}")
    return REFERENCE_MODELS[name](num_classes, attention, param)


class Opaque:
    """An arbitrary Python object (like an argparse.Namespace) for checkpoints that need full unpickling."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
