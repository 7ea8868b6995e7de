"""ImageNet Classification with Deep Convolutional Neural Networks. Alex Krizhevsky, Ilya Sutskever,
Geoffrey E. Hinton. NeurIPS 2012.
https://papers.nips.cc/paper/4824-imagenet-classification-with-deep-convolutional-neural-networks

The narrow AlexNet of the SimAM CIFAR-10 notebook (PaddlePaddle/PaddleX; shared/paper/recipes.md):
128x128 inputs, conv 3->48 k11 s4 p5, maxpool 3/2, conv 48->128 k5 p2, maxpool, three 3x3 convs
128->192->192->128, maxpool, then the notebook's classifier order: Linear(1152, 2048) -> ReLU ->
Dropout(0.5), Linear(2048, 2048) -> ReLU -> Dropout(0.5), Linear(2048, classes) -- dropout acts on
the hidden layers' outputs, not on the conv features as in torchvision's AlexNet. 7,524,042
parameters for 10 classes. AlexNet-SimAM puts the attention after every conv, before its ReLU
(attn_position is "conv" for every type here). No BN.

Initialisation (`init="original"`): Paddle's defaults, which the notebook kept -- conv weights
N(0, sqrt(2 / (in_channels * k * k))), Linear weights Xavier-uniform, all biases 0 (see
`networks.init.paddle_init` for where they were read). `init="kaiming"`: kaiming-normal fan_out
convs with zero biases, Linear layers PyTorch's default.
"""
from __future__ import annotations

import torch
from torch import nn

from ..init import initialize
from ..layers import AttnLayer, make_attn

__all__ = ["AlexNet", "ConvAttnReLU"]


class ConvAttnReLU(nn.Module):
    """Conv (with bias) -> optional attention -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, attn_layer: AttnLayer) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.attn = make_attn(attn_layer, out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.relu(x)


class AlexNet(nn.Module):
    """The notebook's AlexNet for 128x128 images."""

    def __init__(
        self,
        num_classes: int = 10,
        dropout: float = 0.5,
        attn_layer: AttnLayer = None,
        attn_position: str = "conv",
        init: str = "original",
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvAttnReLU(3, 48, 11, 4, 5, attn_layer),
            nn.MaxPool2d(3, 2),
            ConvAttnReLU(48, 128, 5, 1, 2, attn_layer),
            nn.MaxPool2d(3, 2),
            ConvAttnReLU(128, 192, 3, 1, 1, attn_layer),
            ConvAttnReLU(192, 192, 3, 1, 1, attn_layer),
            ConvAttnReLU(192, 128, 3, 1, 1, attn_layer),
            nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(  # the notebook's order: Linear -> ReLU -> Dropout, twice
            nn.Linear(128 * 3 * 3, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(2048, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(2048, num_classes),
        )
        self.num_features = 128 * 3 * 3
        initialize(self, init, original="paddle")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if x.shape[-2:] != (3, 3):
            raise ValueError(f"AlexNet expects 128x128 inputs (3x3 final map), got a {tuple(x.shape[-2:])} map")
        return self.classifier(torch.flatten(x, 1))
