"""data.auto_augment: timm's augmentation policies by their strings, on the uint8 tensors of our pipeline.

Accepted strings (built by timm.data.auto_augment unless said otherwise):
- `rand-m9-mstd0.5-inc1` and every other `rand-...` string: RandAugment;
- `augmix-...` (e.g. `augmix-m5-w4-d2`): AugMix;
- `original`, `originalr`, `v0`, `v0r`, `3a`, optionally with `-mstd<x>`: AutoAugment policies;
  `autoaug` is an alias of `original` (the AutoAugment paper's ImageNet policy);
- `trivialaugment`: TrivialAugmentWide from torchvision (timm 1.0 has no TrivialAugment).
timm's policies work on PIL images and draw from Python's `random` and numpy's global RNG; the
seeded pipeline (engine.data.seeding.seeded_call) seeds both per sample, so the result is a
function of (seed, epoch, index) as for every other transform. Fill colour: the recipe's mean.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["AUTO_AUGMENT_FORMS", "build_auto_augment"]

AUTO_AUGMENT_FORMS = "rand-..., augmix-..., original|originalr|v0|v0r|3a[-mstd<x>], autoaug, trivialaugment"
_TIMM_POLICIES = ("original", "originalr", "v0", "v0r", "3a")


class PILBridge:
    """Applies a PIL-image transform (timm's policies) to a uint8 CHW tensor on any device."""

    def __init__(self, op: Callable[[Image.Image], Image.Image]) -> None:
        self.op = op

    def __call__(self, image: Any) -> Any:
        tensor = torch.as_tensor(image)
        pil = v2.functional.to_pil_image(tensor.cpu())
        out = v2.functional.pil_to_tensor(self.op(pil)).to(tensor.device)
        return tv_tensors.Image(out) if isinstance(image, tv_tensors.Image) else out

    def __repr__(self) -> str:
        return f"PILBridge({self.op!r})"


def _timm_transform(name: str, image_size: int, mean: Sequence[float]) -> Callable[[Image.Image], Image.Image]:
    from timm.data import auto_augment as timm_aa  # local: timm is slow to import

    hparams = dict(translate_const=int(image_size * 0.45), img_mean=tuple(round(255 * m) for m in mean),
                   interpolation=Image.BILINEAR)
    if name.startswith("rand"):
        return timm_aa.rand_augment_transform(name, hparams)
    if name.startswith("augmix"):
        return timm_aa.augment_and_mix_transform(name, hparams)
    if name.split("-")[0] in _TIMM_POLICIES:
        return timm_aa.auto_augment_transform(name, hparams)
    raise ValueError(name)


def build_auto_augment(name: str, image_size: int, mean: Sequence[float]) -> Callable[[Any], Any]:
    """The transform of auto-augment string `name` for uint8 CHW tensors; ValueError if unknown."""
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)
    policy = "original" + name[len("autoaug"):] if name.split("-")[0] == "autoaug" else name
    try:
        return PILBridge(_timm_transform(policy, image_size, mean))
    except (AssertionError, ValueError, KeyError, IndexError) as err:
        raise ValueError(f"unknown auto_augment {name!r} ({type(err).__name__}: {err}); valid forms: "
                         f"{AUTO_AUGMENT_FORMS}") from None
