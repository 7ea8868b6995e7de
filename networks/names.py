"""Names and facts of the model zoo that the command line needs without importing torch.

`--help` and the config check (engine/help.py, engine/config_check.py) must answer in well under
a second and a half, before torch is imported (a torch import alone takes longer). This table
says which architectures and attention types exist, the input sizes each architecture accepts
and the original SimAM code's CIFAR model names. tests/test_help.py checks it against the
registries (`networks.list_models()`, `networks.model_info()`, `networks.list_attentions()`),
so a model added there without a row here fails a test.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHITECTURES", "ATTENTIONS", "MAX_IMAGE_SIZE", "SIMAM_CIFAR_NAMES", "ArchFacts", "input_size_range"]

# No architecture here needs more; 100000 would try to allocate ~120 GB for one batch.
MAX_IMAGE_SIZE = 1024


@dataclass(frozen=True)
class ArchFacts:
    """What the command line needs to know about an architecture without building it."""

    family: str  # "imagenet" (224 px; the 128 px AlexNet) or "cifar" (32 px)
    input_size: int  # the size it was designed for
    num_classes: int  # the usual head size of its data set
    min_size: int  # total stride: the smallest input whose last feature map is 1x1
    max_size: int = MAX_IMAGE_SIZE
    blocks: tuple[str, ...] = ()  # values of model.block it takes (the first is its default)


def _imagenet(blocks: tuple[str, ...] = ()) -> ArchFacts:
    return ArchFacts("imagenet", 224, 1000, 32, blocks=blocks)


def _cifar(min_size: int = 4, blocks: tuple[str, ...] = ()) -> ArchFacts:
    return ArchFacts("cifar", 32, 100, min_size, blocks=blocks)


_BASIC, _BOTTLENECK = ("basic", "bottleneck"), ("bottleneck", "basic")

ARCHITECTURES: dict[str, ArchFacts] = {
    "resnet18": _imagenet(), "resnet34": _imagenet(), "resnet50": _imagenet(), "resnet101": _imagenet(),
    "resnet152": _imagenet(), "resnext50_32x4d": _imagenet(), "resnet50d": _imagenet(), "mobilenet_v2": _imagenet(),
    # the notebook's AlexNet: its classifier takes exactly a 3x3 final map, i.e. inputs of 121 to 152 px
    "alexnet": ArchFacts("imagenet", 128, 10, 121, 152),
    "cifar_resnet20": _cifar(blocks=_BASIC), "cifar_resnet32": _cifar(blocks=_BASIC),
    "cifar_resnet56": _cifar(blocks=_BASIC), "cifar_resnet110": _cifar(blocks=_BASIC),
    "cifar_resnet164": _cifar(blocks=_BOTTLENECK),
    "cifar_preresnet20": _cifar(blocks=_BASIC), "cifar_preresnet32": _cifar(blocks=_BASIC),
    "cifar_preresnet56": _cifar(blocks=_BASIC), "cifar_preresnet110": _cifar(blocks=_BASIC),
    "cifar_preresnet164": _cifar(blocks=_BOTTLENECK),
    "cifar_wrn16_8": _cifar(), "cifar_wrn28_10": _cifar(), "cifar_wrn40_10": _cifar(),
    "cifar_mobilenetv2": _cifar(min_size=8),
}

# attention type -> the paper it implements (networks/attention/__init__.py has the modules)
ATTENTIONS: dict[str, str] = {
    "none": "no attention",
    "simam": "SimAM, Yang et al., ICML 2021",
    "se": "Squeeze-and-Excitation, Hu et al., CVPR 2018",
    "cbam": "CBAM, Woo et al., ECCV 2018",
    "eca": "ECA-Net, Wang et al., CVPR 2020",
    "srm": "SRM, Lee et al., ICCV 2019",
    "gc": "GCNet, Cao et al., ICCV-W 2019",
}

# model names of the SimAM code's CIFAR script (`main_cifar.py --arch`), which are also the arch
# column of the paper's CIFAR tables -> registry names (networks.registry.SIMAM_CIFAR_NAMES)
SIMAM_CIFAR_NAMES: dict[str, str] = {
    "resnet20": "cifar_resnet20", "resnet32": "cifar_resnet32", "resnet56": "cifar_resnet56", "resnet110": "cifar_resnet110",
    "resnet164": "cifar_resnet164", "preresnet20": "cifar_preresnet20", "preresnet32": "cifar_preresnet32",
    "preresnet56": "cifar_preresnet56", "preresnet110": "cifar_preresnet110", "preresnet164": "cifar_preresnet164",
    "wideresnet28x10": "cifar_wrn28_10", "wideresnet40x10": "cifar_wrn40_10", "wideresnet16x8": "cifar_wrn16_8",
    "mobilenetv2": "cifar_mobilenetv2",
}


def input_size_range(arch: str) -> tuple[int, int]:
    """(smallest, largest) image size architecture `arch` accepts; KeyError if unknown."""
    facts = ARCHITECTURES[arch]
    return facts.min_size, facts.max_size
