"""Grad-CAM maps of one or several checkpoints side by side (the SimAM paper's Figure 1), and SimAM weight maps.

    python scripts/gradcam.py runs/none/checkpoints/best.pth runs/simam/checkpoints/best.pth --images val:0 val:7 cat.jpg
    python scripts/gradcam.py CKPT --images val:3 --layer layer3 --out figures/
    python scripts/gradcam.py CKPT_SIMAM --images val:3 --simam-layer layer3.2.attn     # or --simam-layer last

Each checkpoint's network is rebuilt from its stored `config` and `model_spec` and loaded strictly.
An image is a file (resized to the run's image size, then the run's validation transform) or
`val:N`, the N-th image of the run's validation set (the data set must be where the run had it).

Grad-CAM (Selvaraju et al., ICCV 2017, arXiv 1610.02391): the gradient of the top class's logit
with respect to the output A of `--layer` (default: the last module of the forward pass whose
output still has a spatial map, i.e. the last conv stage), averaged over positions, weights the
channels of A; the map is ReLU(sum_c w_c A_c), upsampled bilinearly to the image size and scaled
to [0, 1]. The SimAM map is the weight sigmoid(E_inv) the chosen SimAM module multiplies its input
by, averaged over channels.

Writes into --out (default: current folder): gradcam.png (a row per image, a column per
checkpoint), simam.png with --simam-layer, and gradcam.npz with every map (keys
`gradcam/IMAGE/CKPT`, `simam/IMAGE/CKPT` at image size, `simam_raw/IMAGE/CKPT` at the layer's size,
`image/IMAGE`), as float32 arrays.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from networks.attention import SimAM
from scripts.common import UserError, class_names, load_checkpoint_model, make_parser, plain_simam, run_main, unnormalise, val_dataset


# ------------------------------------------------------------------------------------ the maps
def default_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last top-level module, in forward order, whose output is a (B, C, H, W) map with H*W > 1."""
    order: list[tuple[str, tuple]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, tuple(o.shape)) if torch.is_tensor(o) else None))
             for name, m in model.named_children()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    spatial = [name for name, shape in order if len(shape) == 4 and shape[2] * shape[3] > 1]
    if not spatial:
        raise UserError(f"{type(model).__name__} has no top-level module with a spatial output: give --layer")
    return spatial[-1]


def get_module(model: nn.Module, name: str, what: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        top = ", ".join(n for n, _ in model.named_children())
        raise UserError(f"{what} {name!r} is not a module of {model.model_spec.get('arch', type(model).__name__)}; "
                          f"top-level modules: {top} (deeper ones as dotted names, e.g. layer3.2)")
    return modules[name]


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Grad-CAM map of shape (H, W) of the input in [0, 1], class probabilities) of one image x (1, 3, H, W)."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda mod, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            logits = model(x)
            if "a" not in store or not torch.is_tensor(store["a"]) or store["a"].dim() != 4:
                raise UserError("the Grad-CAM layer must output a (B, C, H, W) map: choose another --layer")
            cls = int(logits[0].argmax()) if target is None else int(target)
            (grad,) = torch.autograd.grad(logits[0, cls], store["a"])
    finally:
        handle.remove()
    act = store["a"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # one weight per channel: the average gradient
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = cam.max()
    return (cam / peak if peak > 0 else cam), logits.detach().softmax(dim=1)[0]


def simam_weights(module: SimAM, x: torch.Tensor) -> torch.Tensor:
    """sigmoid(E_inv) of the SimAM paper's Eq. (5), as the module computes it for input x: (B, C, H, W)."""
    xf = x.detach().double()
    n = max(x.shape[2] * x.shape[3] - 1, 1)
    d = (xf - xf.mean(dim=(2, 3), keepdim=True)) ** 2
    var = d.sum(dim=(2, 3), keepdim=True) / n
    return torch.sigmoid(d / (4 * (var + module.e_lambda)) + 0.5).float()


def simam_map(model: nn.Module, x: torch.Tensor, module: SimAM) -> torch.Tensor:
    """The channel mean of a SimAM module's weights for image x, at the module's resolution (h, w)."""
    store: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(lambda mod, i, o: store.__setitem__("w", simam_weights(mod, i[0])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["w"][0].mean(dim=0)


def _has_simam(model: nn.Module) -> bool:
    return any(isinstance(m, SimAM) for m in model.modules())


def find_simam(model: nn.Module, name: str) -> tuple[str, SimAM]:
    """(name, module) of SimAM module `name` ('last': the last one) of a model that has SimAM modules."""
    simams = [(n, m) for n, m in model.named_modules() if isinstance(m, SimAM)]
    if name == "last":
        return simams[-1]
    module = get_module(model, name, "--simam-layer")
    if not isinstance(module, SimAM):
        shown = ", ".join(n for n, _ in simams[-3:])
        raise UserError(f"--simam-layer {name!r} is a {type(module).__name__}, not SimAM; SimAM modules are e.g. {shown} (or 'last')")
    return name, module


# ------------------------------------------------------------------------------------ inputs
@dataclass
class Loaded:
    model: nn.Module
    config: dict
    spec: dict
    label: str
    path: Path


_VAL_CACHE: dict[str, Any] = {}


def _val(config: dict) -> Any:
    key = json.dumps([config.get("data"), config.get("seed")], sort_keys=True, default=str)
    if key not in _VAL_CACHE:
        _VAL_CACHE[key] = val_dataset(config)
    return _VAL_CACHE[key]


def load_image(spec: str, config: dict) -> tuple[torch.Tensor, Optional[int]]:
    """(normalised (3, H, W) tensor as the run's model sees it, true label or None) of a file or `val:N`."""
    from engine.data import build_transforms

    d = config.get("data") or {}
    size = int(d.get("image_size") or 224)
    m = re.fullmatch(r"val:(\d+)", spec)
    if m:
        val = _val(config)
        index = int(m.group(1))
        if index >= len(val):
            raise UserError(f"{spec}: the validation set has {len(val)} images (val:0 .. val:{len(val) - 1})")
        image, label = val[index]
        return image, int(label)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"image not found: {spec} (a file, or val:N for the N-th validation image)")
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            pil = Image.open(f).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read image {spec}: {e}") from None
    _, val_tf = build_transforms(d.get("augment", "none"), size)
    return val_tf(pil.resize((size, size), Image.BILINEAR)), None


def _labels(loaded: list[Loaded]) -> None:
    base = [f"{l.spec.get('arch')} + {l.spec.get('attention')}" for l in loaded]
    for l, b in zip(loaded, base):
        l.label = b if base.count(b) == 1 else f"{b} ({l.path.parent.parent.name}/{l.path.name})"


def _class_name(config: dict, index: int) -> str:
    try:
        names = class_names(_val(config))
    except UserError:
        names = None
    return names[index] if names and index < len(names) else f"class {index}"


# ------------------------------------------------------------------------------------ figure
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(rows: list[dict], columns: list[str], path: Path, title: str) -> None:
    import numpy as np

    plt = _plt()
    ncols = 1 + len(columns)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.8 * len(rows)), squeeze=False, constrained_layout=True)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"])
        axes[r, 0].set_title(row["title"], fontsize=8)
        for c, cell in enumerate(row["cells"]):
            ax = axes[r, c + 1]
            ax.imshow(row["image"])
            ax.imshow(cell["map"], cmap="jet", alpha=0.5, vmin=0, vmax=cell.get("vmax", 1.0))
            ax.set_title(f"{columns[c]}\n{cell['text']}", fontsize=8)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse(argv: list[str]) -> Any:
    parser = make_parser("gradcam.py", __doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints of this project (run_dir/checkpoints/*.pth)")
    parser.add_argument("--images", nargs="+", required=True, metavar="IMG", help="image files and/or val:N")
    parser.add_argument("--layer", help="module for Grad-CAM, a dotted name such as layer4 or layer3.2 (default: the last conv stage)")
    parser.add_argument("--simam-layer", metavar="NAME", help="also map the weights of this SimAM module (e.g. layer3.2.attn, or 'last')")
    parser.add_argument("--target", type=int, help="class index to explain (default: each model's top class)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output folder (default: current folder)")
    return parser.parse_args(argv)


def _load(args: Any) -> tuple[list[Loaded], list, list, list]:
    """(checkpoints, images per image spec and checkpoint, (name, module) Grad-CAM layers, SimAM modules or None)."""
    loaded = []
    for p in args.checkpoints:
        model, config, spec = load_checkpoint_model(p)
        loaded.append(Loaded(model, config, spec, "", Path(p)))
    _labels(loaded)
    for l in loaded:
        n = int(l.spec.get("num_classes") or 0)
        if args.target is not None and n and not 0 <= args.target < n:
            raise UserError(f"--target {args.target}: {l.label} has {n} classes (0 .. {n - 1})")
    images = [[load_image(spec, l.config) for l in loaded] for spec in args.images]  # per model: its own transform
    layers = []
    for j, l in enumerate(loaded):
        name = args.layer or default_layer(l.model, images[0][j][0][None])
        layers.append((name, get_module(l.model, name, "--layer")))
    simams = [find_simam(l.model, args.simam_layer) if _has_simam(l.model) else None for l in loaded] if args.simam_layer else []
    if args.simam_layer and not any(simams):
        raise UserError("--simam-layer: none of the checkpoints has SimAM modules (attention "
                        + ", ".join(str(l.spec.get("attention")) for l in loaded) + ")")
    return loaded, images, layers, simams


def _cells(l: Loaded, x: torch.Tensor, layer: tuple[str, nn.Module], simam: Optional[tuple[str, SimAM]], target: Optional[int],
           key: str, arrays: dict) -> tuple[dict, Optional[dict]]:
    """The Grad-CAM cell (and the SimAM cell) of one checkpoint and image; the maps go into `arrays` under `key`."""
    import numpy as np

    layer_name, module = layer
    cam, probs = grad_cam(l.model, x, module, target)
    cls = int(probs.argmax()) if target is None else target
    arrays[f"gradcam/{key}"] = cam.numpy().astype(np.float32)
    cell = {"map": cam.numpy(), "text": f"{layer_name}: {_class_name(l.config, cls)} ({100 * float(probs[cls]):.0f}%)"}
    if simam is None:
        return cell, None
    sname, smod = simam
    raw = simam_map(l.model, x, smod)
    up = F.interpolate(raw[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    arrays[f"simam_raw/{key}"] = raw.numpy().astype(np.float32)
    arrays[f"simam/{key}"] = up.numpy().astype(np.float32)
    lo, hi = float(raw.min()), float(raw.max())
    return cell, {"map": ((up - lo) / (hi - lo + 1e-12)).numpy(), "text": f"{sname} {tuple(raw.shape)}: {lo:.3f}..{hi:.3f}"}


def _main(argv: list[str]) -> int:
    import numpy as np

    args = _parse(argv)
    loaded, images, layers, simams = _load(args)
    args.out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    cam_rows, simam_rows = [], []
    first = loaded[0]
    for i, spec in enumerate(args.images):
        x_show, label = images[i][0]
        shown = unnormalise(x_show, (first.config.get("data") or {}).get("augment", "none"))
        arrays[f"image/{i}"] = shown.astype(np.float32)
        title = spec + (f"\ntrue: {_class_name(first.config, label)}" if label is not None else "")
        cells = [_cells(l, images[i][j][0][None], layers[j], simams[j] if simams else None, args.target, f"{i}/{j}", arrays)
                 for j, l in enumerate(loaded)]
        cam_rows.append({"image": shown, "title": title, "cells": [c for c, _ in cells]})
        if any(s is not None for _, s in cells):
            simam_rows.append({"image": shown, "title": title, "cells": [s for _, s in cells if s is not None]})
    _figure(cam_rows, [l.label for l in loaded], args.out / "gradcam.png",
            "Grad-CAM of the top class (red: high)" if args.target is None else f"Grad-CAM of class {args.target}")
    written = [args.out / "gradcam.png"]
    if simam_rows:
        simam_labels = [l.label for l, sm in zip(loaded, simams) if sm is not None]
        _figure(simam_rows, simam_labels, args.out / "simam.png", "SimAM weights sigmoid(E_inv), channel mean (scaled to its range per image)")
        written.append(args.out / "simam.png")
    np.savez_compressed(args.out / "gradcam.npz", **arrays)
    written.append(args.out / "gradcam.npz")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    with plain_simam():
        return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
