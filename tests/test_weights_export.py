"""`networks.save_weights`: the SimAM code's layout (what its mmdetection backbone loads), torchvision's, ours.

The expected key names are written out here from the original definitions (the SimAM code's
`mmdetection/mmdet/models/backbones/resnet_simam.py`, `ResNetAM`, and `tests/reference_simam.py`,
which re-implements its classification networks), not read from the code under test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import networks
import reference_simam as ref
from networks.weights import WeightsError

pytestmark = pytest.mark.usefixtures("single_thread")

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def resnet_am_keys(depth: int, simam: bool) -> list[str]:
    """State dict keys of mmdetection's `ResNetAM(depth, attention_type="simam" if simam else "none")`
    after its `init_weights` (which sets `self.fc = None` before loading the checkpoint)."""
    bottleneck, layers = {18: (False, [2, 2, 2, 2]), 50: (True, [3, 4, 6, 3]), 101: (True, [3, 4, 23, 3])}[depth]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in BN]
    for stage, blocks in enumerate(layers, 1):
        for j in range(blocks):
            p = f"layer{stage}.{j}."
            for c in range(1, (3 if bottleneck else 2) + 1):
                keys.append(f"{p}conv{c}.0.weight" if simam and c == 2 else f"{p}conv{c}.weight")  # SimAM wraps conv2
                keys += [f"{p}bn{c}.{s}" for s in BN]
            if j == 0 and (stage > 1 or bottleneck):  # stride 2, or 64 -> 256 channels
                keys.append(f"{p}downsample.0.weight")
                keys += [f"{p}downsample.1.{s}" for s in BN]
    return keys


def build(name: str, attention: str = "none", num_classes: int = 1000, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return networks.create_model(name, num_classes=num_classes, attention=attention, **kwargs).eval()


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message, message
    return message


@torch.no_grad()
def same_logits(a: nn.Module, b: nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- mmdetection's ResNetAM
@pytest.mark.parametrize("depth,attention", [(50, "simam"), (50, "none"), (18, "simam")])
def test_original_format_has_the_mmdetection_backbone_keys(depth: int, attention: str, tmp_path: Path) -> None:
    model = build(f"resnet{depth}", attention, attention_kwargs={"e_lambda": 0.1} if attention == "simam" else None)
    expected = resnet_am_keys(depth, attention == "simam")

    path = tmp_path / "backbone.pth"
    networks.save_weights(model, path, format="original", backbone_only=True)
    saved = torch.load(path, weights_only=True)
    assert list(saved) == ["state_dict"]
    assert sorted(saved["state_dict"]) == sorted(expected)

    networks.save_weights(model, path, format="original")  # the original --save_weights: head included
    full = torch.load(path, weights_only=True)["state_dict"]
    assert sorted(full) == sorted(expected + ["fc.weight", "fc.bias"])
    if attention == "simam":  # the 16 (R50) wrapped conv2 weights are the model's, not left random
        conv2 = [k for k in full if k.endswith("conv2.0.weight")]
        assert len(conv2) == {50: 16, 18: 8}[depth]
        for key in conv2:
            assert torch.equal(full[key], model.state_dict()[key.replace("conv2.0.", "conv2.")])


# ----------------------------------------------------------------------------- the SimAM code's classification networks
# reference name -> (our name, create_model kwargs, input size for a logits check or None)
ORIGINAL_ARCHS = {
    "resnet18": ("resnet18", {}, 64),
    "resnet50d": ("resnet50d", {}, None),
    "mobilenet_v2": ("mobilenet_v2", {}, 64),
    "cifar_resnet20": ("cifar_resnet20", {}, 32),
    "cifar_resnet164": ("cifar_resnet164", {}, None),
    "cifar_preresnet56": ("cifar_preresnet56", {}, None),
    "cifar_preresnet20_bottleneck": ("cifar_preresnet20", {"block": "bottleneck"}, 32),
    "cifar_wrn16_8": ("cifar_wrn16_8", {}, None),
    "cifar_mobilenetv2": ("cifar_mobilenetv2", {}, 32),
}


@pytest.mark.parametrize("ref_name", sorted(ORIGINAL_ARCHS))
@pytest.mark.parametrize("attention", ["none", "simam", "se", "cbam"])
def test_original_format_loads_strictly_into_the_original_network(ref_name: str, attention: str, tmp_path: Path) -> None:
    name, kwargs, size = ORIGINAL_ARCHS[ref_name]
    param = {"simam": 0.1, "se": 8, "cbam": 8}.get(attention)
    attention_kwargs = {} if param is None else {"e_lambda" if attention == "simam" else "reduction": param}
    if size is None:  # large: key names and shapes only
        with torch.device("meta"):
            model = networks.create_model(name, num_classes=10, attention=attention, attention_kwargs=attention_kwargs, **kwargs)
            original = ref.build_reference(ref_name, 10, attention, param)
        sd = networks.export.weights_state_dict(model.to_empty(device="cpu"), "original")["state_dict"]
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in original.state_dict().items()}
        return
    model = build(name, attention, 10, attention_kwargs=attention_kwargs, **kwargs)
    for m in model.modules():  # non-trivial BN statistics, so that a misplaced key changes the logits
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "weights.pth"
    networks.save_weights(model, path, format="original")
    original = ref.build_reference(ref_name, 10, attention, param)
    original.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    same_logits(model, original, size)


def test_original_format_round_trip_through_load_weights(tmp_path: Path) -> None:
    model = build("cifar_resnet20", "se", 100)
    path = tmp_path / "se.pth"
    networks.save_weights(model, path)  # format="original" is the default
    again = build("cifar_resnet20", "se", 100)
    for p in again.parameters():
        nn.init.zeros_(p)
    networks.load_weights(again, path)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    info = networks.inspect_checkpoint(torch.load(path, weights_only=True))
    assert (info["container"], info["layout"], info["attention"], info["num_classes"]) == ("original", "original", "se", 100)


# ----------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("name,attention", [("resnet18", "none"), ("mobilenet_v2", "none"), ("resnet18", "simam")])
def test_torchvision_format_loads_into_torchvision(name: str, attention: str, tmp_path: Path) -> None:
    model = build(name, attention)
    path = tmp_path / "tv.pth"
    networks.save_weights(model, path, format="torchvision")
    tv = getattr(torchvision.models, name)(weights=None)
    tv.load_state_dict(torch.load(path, weights_only=True), strict=True)
    if attention == "none":
        same_logits(model, tv, 64)


@pytest.mark.parametrize("name,attention,needle", [
    ("resnet18", "se", "cannot hold the parameters of se"),
    ("cifar_resnet20", "none", "torchvision has no cifar_resnet20"),
    ("resnet50d", "none", "torchvision has no resnet50d"),
])
def test_torchvision_format_refusals(name: str, attention: str, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "tv.pth"
    with pytest.raises(WeightsError) as excinfo:
        networks.save_weights(build(name, attention, 10), path, format="torchvision")
    assert needle in one_line(excinfo)
    assert not path.exists()


# ----------------------------------------------------------------------------- ours, refusals, the file itself
def test_ours_format_keeps_the_model_spec(tmp_path: Path) -> None:
    model = build("cifar_resnet20", "simam", 10)
    path = tmp_path / "ours.pth"
    networks.save_weights(model, path, format="ours")
    saved = torch.load(path, weights_only=True)
    assert saved["model_spec"] == model.model_spec and not saved["backbone_only"]
    networks.load_weights(build("cifar_resnet20", "simam", 10), path)
    with pytest.raises(WeightsError, match="attention"):  # same keys, another network: refused by the spec
        networks.load_weights(build("cifar_resnet20", "none", 10), path)


@pytest.mark.parametrize("name,attention,kwargs,needle", [
    ("alexnet", "none", {}, "PaddlePaddle"),
    ("cifar_resnet20", "eca", {}, "no 'eca' attention"),
    ("cifar_resnet20", "se", {"attn_position": "conv"}, "attn_position='conv'"),
])
def test_original_format_refusals(name: str, attention: str, kwargs: dict, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    with pytest.raises(WeightsError) as excinfo:
        networks.save_weights(build(name, attention, 10, **kwargs), path, format="original")
    assert needle in one_line(excinfo)
    assert not path.exists()


def test_file_holds_detached_cpu_copies_and_nothing_else_is_written(tmp_path: Path) -> None:
    model = build("cifar_resnet20", "simam", 10).train()
    written = networks.save_weights(model, tmp_path / "w.pth")
    params = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    for key, value in written["state_dict"].items():
        assert value.device.type == "cpu" and not value.requires_grad, key
        assert value.data_ptr() not in params, key  # a copy: later training does not change the file's tensors
    loaded = torch.load(tmp_path / "w.pth", weights_only=True)  # no map_location, no trusted unpickling
    assert all(v.device.type == "cpu" for v in loaded["state_dict"].values())
    assert sorted(os.listdir(tmp_path)) == ["w.pth"]  # no temporary file left behind


def test_bad_path_and_format(tmp_path: Path) -> None:
    model = build("cifar_resnet20", "none", 10)
    with pytest.raises(WeightsError) as excinfo:
        networks.save_weights(model, tmp_path / "missing" / "w.pth")
    assert "does not exist" in one_line(excinfo)
    with pytest.raises(WeightsError) as excinfo:
        networks.save_weights(model, tmp_path / "w.pth", format="mmdet")
    assert "original, torchvision, ours" in one_line(excinfo)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("wrap", ["compile", "dataparallel"])
def test_wrapped_model_is_written_without_wrapper_prefixes(wrap: str, tmp_path: Path) -> None:
    model = build("cifar_resnet20", "simam", 10)
    wrapped = torch.compile(model) if wrap == "compile" else nn.DataParallel(model)  # compile: lazy, nothing compiled here
    written = networks.save_weights(wrapped, tmp_path / "w.pth")
    assert sorted(written["state_dict"]) == sorted(networks.save_weights(model, tmp_path / "plain.pth")["state_dict"])
    assert "layer1.0.conv2.0.weight" in written["state_dict"]
