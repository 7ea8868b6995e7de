"""Checkpoint compatibility: the SimAM code's checkpoints, torchvision's weights and our own load
into `networks` models and give the same logits; bad files and mismatches fail with one clear line.

The original networks are re-implemented in `reference_simam.py` with their module layout
(attention inside `nn.Sequential` wrappers) and forward pass. Each reference model gets random
weights and random, non-identity BN statistics; its state dict is saved the way the original
scripts saved it (checkpoint dict, DataParallel `module.` prefix, thop buffers, `_orig_mod.`),
loaded with `networks.load_weights(..., strict=True)` and both models are compared in eval mode.
Small inputs (64x64 ImageNet, 32x32 CIFAR) keep the whole file fast on a CPU.
"""
from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import networks
import reference_simam as ref
from networks.weights import WeightsError

ATTENTIONS = ["none", "simam", "se", "cbam"]
# the original defaults: SimAM lambda 1e-4, SE/CBAM reduction 16
DEFAULT_PARAM = {"none": None, "simam": 1e-4, "se": 16, "cbam": 16}
KWARG = {"simam": "e_lambda", "se": "reduction", "cbam": "reduction"}

# reference name -> (our registry name, extra create_model kwargs, input size, num_classes)
ARCHS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "resnet18": ("resnet18", {}, 64, 1000),
    "resnet50": ("resnet50", {}, 64, 1000),
    "resnext50_32x4d": ("resnext50_32x4d", {}, 64, 1000),
    "resnet50d": ("resnet50d", {}, 64, 1000),
    "mobilenet_v2": ("mobilenet_v2", {}, 64, 1000),
    "cifar_resnet20": ("cifar_resnet20", {}, 32, 100),
    "cifar_resnet164": ("cifar_resnet164", {}, 32, 100),
    "cifar_preresnet56": ("cifar_preresnet56", {}, 32, 100),
    "cifar_preresnet20_bottleneck": ("cifar_preresnet20", {"block": "bottleneck"}, 32, 10),
    "cifar_wrn16_8": ("cifar_wrn16_8", {}, 32, 100),
    "cifar_mobilenetv2": ("cifar_mobilenetv2", {}, 32, 10),
}
FORMATS = ["simam", "simam_module", "state_dict", "compiled_thop"]


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Small inputs gain nothing from intra-op threads, and spinning threads crawl on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def randomize(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics that are neither identity nor wild.

    The running statistics are first set to those of a random batch (so activations stay of
    order one through deep networks), then perturbed; the model is left in eval mode.
    """
    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 1.0
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.2)
    model.train()
    model(torch.randn(4, 3, size, size))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean))
        bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.6, 1.4))
        bn.num_batches_tracked.fill_(int(torch.randint(1, 10_000, ())))
    return model.eval()


def thop_entries(model: nn.Module) -> dict[str, torch.Tensor]:
    """The `total_ops`/`total_params` buffers that an old thop.profile leaves behind."""
    out = {}
    for name, _ in model.named_modules():
        prefix = f"{name}." if name else ""
        out[prefix + "total_ops"] = torch.zeros(1, dtype=torch.float64)
        out[prefix + "total_params"] = torch.zeros(1, dtype=torch.float64)
    return out


def pack(model: nn.Module, fmt: str, arch: str) -> Any:
    """The reference model's weights as one of the files the original workflows produced."""
    sd = model.state_dict()
    if fmt == "state_dict":
        return sd
    if fmt == "compiled_thop":  # torch.compile'd model profiled with thop
        sd = {**sd, **thop_entries(model)}
        return {f"_orig_mod.{k}": v for k, v in sd.items()}
    if fmt == "simam_module":  # saved from DataParallel
        sd = {f"module.{k}": v for k, v in sd.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return {"state_dict": sd, "epoch": 3, "arch": arch, "best_acc": torch.tensor(71.3), "optimizer": optimizer.state_dict()}


def ours(ref_name: str, attention: str, param: Optional[float] = None, num_classes: Optional[int] = None) -> nn.Module:
    name, kwargs, _, classes = ARCHS[ref_name]
    attention_kwargs = {} if param is None else {KWARG[attention]: param}
    model = networks.create_model(name, num_classes=num_classes or classes, attention=attention,
                                  attention_kwargs=attention_kwargs, **kwargs)
    return model.eval()


def reference(ref_name: str, attention: str, param: Optional[float] = None, num_classes: Optional[int] = None, seed: int = 0) -> nn.Module:
    _, _, size, classes = ARCHS[ref_name]
    torch.manual_seed(seed)
    return randomize(ref.build_reference(ref_name, num_classes or classes, attention, param), size, seed)


@torch.no_grad()
def assert_same_logits(a: nn.Module, b: nn.Module, size: int, seed: int = 1) -> None:
    """Same logits on one random batch, to 1e-5 relative.

    Both models run in float64 (casting the loaded float32 weights exactly): random deep
    networks amplify float32 rounding differences such as CBAM's pooling order (ResNet-164 with
    CBAM: 20% apart in float32, 6e-9 in float64), which would hide a real mismatch in noise.
    """
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected, actual = b.double()(x), a.double()(x)
    a.float(), b.float()
    assert torch.isfinite(expected).all()
    assert expected.std() > 1e-3, "degenerate logits: the comparison would prove nothing"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))


def save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- the SimAM code's checkpoints
CASES = [
    pytest.param(arch, attention, FORMATS[(i + j) % len(FORMATS)], id=f"{arch}-{attention}-{FORMATS[(i + j) % len(FORMATS)]}")
    for i, arch in enumerate(ARCHS)
    for j, attention in enumerate(ATTENTIONS)
]


@pytest.mark.parametrize("arch,attention,fmt", CASES)
def test_original_checkpoint_gives_same_logits(arch: str, attention: str, fmt: str, tmp_path: Path) -> None:
    param = DEFAULT_PARAM[attention]
    original = reference(arch, attention, param)
    path = save(pack(original, fmt, arch), tmp_path / "checkpoint.pth.tar")
    model = ours(arch, attention, param)
    report = networks.load_weights(model, path, strict=True)
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.format == ("simam" if fmt.startswith("simam") else "state_dict")
    if attention != "none" or arch == "mobilenet_v2":  # wrapped attention; MobileNetV2's classifier.0
        assert report.renamed > 0
    assert_same_logits(model, original, ARCHS[arch][2])


@pytest.mark.parametrize("arch,attention", [("cifar_resnet20", "se"), ("cifar_mobilenetv2", "cbam"), ("resnet18", "cbam")])
def test_reduction_4(arch: str, attention: str, tmp_path: Path) -> None:
    """The original CIFAR script's default --attention_param 4 (see PITFALLS.md)."""
    original = reference(arch, attention, 4)
    path = save(pack(original, "simam_module", arch), tmp_path / "r4.pth")
    model = ours(arch, attention, 4)
    networks.load_weights(model, path)
    assert_same_logits(model, original, ARCHS[arch][2])
    with pytest.raises(WeightsError, match="shape mismatch"):  # reduction 16 has other fc shapes
        networks.load_weights(ours(arch, attention, 16), path)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # thop's distutils LooseVersion
@pytest.mark.parametrize("attention", ["simam", "se"])
@pytest.mark.parametrize(
    "prefix", ["", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."], ids=["plain", "dp", "compiled", "dp-compiled", "compiled-dp"]
)
def test_prefixes_thop_and_optimizer_state(prefix: str, attention: str, tmp_path: Path) -> None:
    """Every wrapper prefix, real thop buffers, an optimizer with momentum, numpy metrics."""
    import thop

    original = reference("cifar_resnet20", attention, 1e-4 if attention == "simam" else 16)
    profiled = copy.deepcopy(original)
    thop.profile(profiled, inputs=(torch.randn(1, 3, 32, 32),), verbose=False)  # leaves total_ops/total_params
    profiled.eval()
    sd = profiled.state_dict()
    thop_keys = [k for k in sd if k.endswith(("total_ops", "total_params"))]
    optimizer = torch.optim.SGD(original.parameters(), lr=0.1, momentum=0.9)
    for p in original.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # momentum buffers in the optimizer state
    ckpt = {
        "state_dict": {prefix + k: v for k, v in sd.items()},
        "epoch": 3,
        "arch": "resnet20",
        "best_acc": torch.tensor(71.3),
        "best_prec1": np.float64(71.3),
        "optimizer": optimizer.state_dict(),
    }
    path = save(ckpt, tmp_path / "model_best.pth.tar")
    model = ours("cifar_resnet20", attention, 1e-4 if attention == "simam" else 16)
    report = networks.load_weights(model, path)
    assert report.format == "simam" and report.missing_keys == [] and report.unexpected_keys == []
    assert not [k for k in model.state_dict() if "total_" in k]
    assert thop_keys  # the test did exercise the thop buffers
    assert_same_logits(model, original, 32)


def test_loads_from_a_dict_as_well_as_a_path() -> None:
    original = reference("cifar_resnet20", "simam", 1e-4)
    model = ours("cifar_resnet20", "simam", 1e-4)
    networks.load_weights(model, {"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}})
    assert_same_logits(model, original, 32)


# ----------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_torchvision_weights(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = randomize(getattr(torchvision.models, name)(weights=None), 64)
    path = save(tv.state_dict(), tmp_path / f"{name}.pth")
    model = networks.create_model(name, num_classes=1000, attention="none").eval()
    report = networks.load_weights(model, path, strict=True)
    assert report.renamed == 0 and report.missing_keys == [] and report.unexpected_keys == []
    assert_same_logits(model, tv, 64)


# ----------------------------------------------------------------------------- mismatches
@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    original = reference("resnet18", "none")
    return save(pack(original, "simam_module", "resnet18"), tmp_path_factory.mktemp("r18") / "resnet18.pth.tar")


def test_other_architecture_is_refused(resnet18_checkpoint: Path) -> None:
    model = networks.create_model("resnet34", num_classes=1000)
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(model, resnet18_checkpoint)
    message = one_line_error(excinfo)
    assert isinstance(excinfo.value, ValueError)
    assert "missing" in message and "layer1.2.conv1.weight" in message, message


@pytest.mark.parametrize("layout", ["simam", "project"])
def test_attention_checkpoint_into_plain_model(layout: str, tmp_path: Path) -> None:
    if layout == "simam":
        source = pack(reference("resnet18", "se", 16), "simam_module", "resnet18")
    else:
        source = {"model": networks.create_model("resnet18", num_classes=1000, attention="se").state_dict()}
    path = save(source, tmp_path / "se.pth")
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(networks.create_model("resnet18", num_classes=1000, attention="none"), path)
    assert "attention" in one_line_error(excinfo)


def test_plain_checkpoint_into_attention_model(resnet18_checkpoint: Path) -> None:
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(networks.create_model("resnet18", num_classes=1000, attention="cbam"), resnet18_checkpoint)
    assert "attention" in one_line_error(excinfo)


@pytest.fixture(scope="module")
def cifar10_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    original = reference("cifar_resnet20", "simam", 1e-4, num_classes=10)
    path = save(pack(original, "simam_module", "resnet20"), tmp_path_factory.mktemp("c10") / "cifar10.pth.tar")
    return path, original.state_dict()


def test_other_number_of_classes_is_refused(cifar10_checkpoint: tuple[Path, dict]) -> None:
    path, _ = cifar10_checkpoint
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(ours("cifar_resnet20", "simam", 1e-4, num_classes=100), path)
    message = one_line_error(excinfo)
    assert "number of classes" in message and "linear.weight" in message, message
    assert "(10 in the checkpoint)" in message, message  # the head size read from the checkpoint


def test_non_strict_loads_the_backbone_and_reports_the_head(cifar10_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    path, source = cifar10_checkpoint
    head = {"linear.weight", "linear.bias"}
    # 1. a head of another size: reported as missing, left as it was
    model = ours("cifar_resnet20", "simam", 1e-4, num_classes=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = networks.load_weights(model, path, strict=False)
    assert set(report.missing_keys) == head and len(report.missing_keys) == 2
    assert report.unexpected_keys == []
    after = model.state_dict()
    for key in after:
        expected = before[key] if key in head else source[key.replace("conv2.weight", "conv2.0.weight")]
        assert torch.equal(after[key], expected), key
    # 2. a head under another name: missing and unexpected are exactly the head keys
    renamed = {k.replace("linear.", "classifier."): v for k, v in source.items()}
    report = networks.load_weights(ours("cifar_resnet20", "simam", 1e-4, num_classes=10), save(renamed, tmp_path / "h.pth"), strict=False)
    assert sorted(report.missing_keys) == sorted(head)
    assert sorted(report.unexpected_keys) == ["classifier.bias", "classifier.weight"]


# ----------------------------------------------------------------------------- bad files
def test_truncated_checkpoint(cifar10_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = cifar10_checkpoint
    data = path.read_bytes()
    truncated = tmp_path / "last.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(ours("cifar_resnet20", "simam"), truncated)
    message = one_line_error(excinfo)
    assert str(truncated) in message and "truncated" in message, message


NOT_CHECKPOINTS = {
    "text": b"epoch,acc\n1,10.5\n",
    "json": json.dumps({"arch": "resnet20", "epoch": 3}).encode(),
    "random": np.random.default_rng(0).bytes(4096),
    "empty": b"",
}


@pytest.mark.parametrize("kind", sorted(NOT_CHECKPOINTS))
def test_not_a_checkpoint(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.pth"
    path.write_bytes(NOT_CHECKPOINTS[kind])
    for trust in (False, True):
        with pytest.raises(WeightsError) as excinfo:
            networks.load_weights(ours("cifar_resnet20", "none"), path, trust=trust)
        assert str(path) in one_line_error(excinfo)


@pytest.mark.parametrize("kind", ["json", "random"])
def test_not_a_checkpoint_is_not_called_untrusted(kind: str, tmp_path: Path) -> None:
    """Bytes that are not a pickle must not be reported as a file one could load by trusting it."""
    path = tmp_path / f"{kind}.pth"
    path.write_bytes(NOT_CHECKPOINTS[kind])
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(ours("cifar_resnet20", "none"), path)
    message = one_line_error(excinfo)
    assert "pickled" not in message and "trust" not in message, message


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model_best.pth.tar"
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(ours("cifar_resnet20", "none"), path)
    assert str(path) in one_line_error(excinfo)
    with pytest.raises(WeightsError):
        networks.load_weights(ours("cifar_resnet20", "none"), os.fspath(tmp_path))  # a directory


def test_pickled_objects_need_trust(tmp_path: Path) -> None:
    original = reference("cifar_resnet20", "simam", 1e-4)
    ckpt = pack(original, "simam_module", "resnet20")
    ckpt["args"] = ref.Opaque(7)  # e.g. an argparse.Namespace saved with the weights
    path = save(ckpt, tmp_path / "with_args.pth.tar")
    model = ours("cifar_resnet20", "simam", 1e-4)
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(model, path)
    message = one_line_error(excinfo)
    assert str(path) in message and "trust" in message, message
    networks.load_weights(model, path, trust=True)
    assert_same_logits(model, original, 32)


# ----------------------------------------------------------------------------- our own checkpoints
def test_project_checkpoint_checks_model_spec(tmp_path: Path) -> None:
    source = randomize(ours("cifar_resnet20", "simam"), 32)
    ckpt = {"model": source.state_dict(), "model_spec": {"arch": "cifar_resnet20", "attention": "simam"}, "epoch": 3}
    path = save(ckpt, tmp_path / "last.pth")
    model = ours("cifar_resnet20", "simam")
    assert networks.load_weights(model, path).format == "project"
    assert_same_logits(model, source, 32)
    # same state dict keys (SimAM has no parameters), but the wrong network
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(ours("cifar_resnet20", "none"), path)
    message = one_line_error(excinfo)
    assert "attention" in message and "simam" in message, message


# ----------------------------------------------------------------------------- attention read from the keys
# reference arch -> the key that shows each attention type in the SimAM code's layout (written out
# from the original definitions: SimAM wraps conv2 -- MobileNetV2: sits inside the depthwise
# ConvBNReLU, moving its BN to index 2 --; SE/CBAM wrap the last BN of post-activation blocks,
# the last conv of pre-activation ones and of the WRN, and are appended to MobileNetV2's `conv`)
EVIDENCE = {
    "resnet18": {"simam": "layer1.0.conv2.0.weight", "se": "layer1.0.bn2.1.fc.0.weight",
                 "cbam": "layer1.0.bn2.1.ChannelGate.mlp.1.weight"},
    "resnet50": {"simam": "layer1.0.conv2.0.weight", "se": "layer1.0.bn3.1.fc.0.weight",
                 "cbam": "layer1.0.bn3.1.ChannelGate.mlp.1.weight"},
    "mobilenet_v2": {"simam": "features.1.conv.0.2.running_mean", "se": "features.1.conv.3.fc.0.weight",
                     "cbam": "features.1.conv.3.ChannelGate.mlp.1.weight"},
    "cifar_resnet20": {"simam": "layer1.0.conv2.0.weight", "se": "layer1.0.bn2.1.fc.0.weight",
                       "cbam": "layer1.0.bn2.1.ChannelGate.mlp.1.weight"},
    "cifar_preresnet20_bottleneck": {"simam": "layer1.0.conv2.0.weight", "se": "layer1.0.conv3.1.fc.0.weight",
                                     "cbam": "layer1.0.conv3.1.ChannelGate.mlp.1.weight"},
    "cifar_wrn16_8": {"simam": "block1.layer.0.conv2.0.weight", "se": "block1.layer.0.conv2.1.fc.0.weight",
                      "cbam": "block1.layer.0.conv2.1.ChannelGate.mlp.1.weight"},
    "cifar_mobilenetv2": {"simam": "layers.0.conv2.0.weight", "se": "layers.0.bn3.1.fc.0.weight",
                          "cbam": "layers.0.bn3.1.ChannelGate.mlp.1.weight"},
}
# the flags each refusal must name: --attention_param is the reduction read from the shapes for
# SE/CBAM, the paper's lambda for SimAM (0.1 ImageNet, 1e-4 CIFAR); plain: drop --attention_type
EXPECTED_FLAGS = {
    ("imagenet", "simam"): "--attention_type simam --attention_param 0.1",
    ("cifar", "simam"): "--attention_type simam --attention_param 1e-4",
    ("imagenet", "se"): "--attention_type se --attention_param 8", ("cifar", "se"): "--attention_type se --attention_param 8",
    ("imagenet", "cbam"): "--attention_type cbam --attention_param 4", ("cifar", "cbam"): "--attention_type cbam --attention_param 4",
    ("imagenet", "none"): "--attention_type none", ("cifar", "none"): "--attention_type none",
}
REDUCTION = {"none": None, "simam": 0.1, "se": 8, "cbam": 4}


@functools.lru_cache(maxsize=None)
def original_file(ref_name: str, attention: str) -> dict:
    """The SimAM code's checkpoint dict (DataParallel keys), with untouched random weights (cached: read-only)."""
    _, _, _, classes = ARCHS[ref_name]
    torch.manual_seed(0)
    model = ref.build_reference(ref_name, classes, attention, REDUCTION[attention])
    return {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 90, "arch": ref_name,
            "best_acc": 71.3}


@pytest.mark.parametrize("ref_name", sorted(EVIDENCE))
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_inspect_original_checkpoint(ref_name: str, attention: str) -> None:
    info = networks.inspect_checkpoint(original_file(ref_name, attention))
    assert info["container"] == "original"
    assert info["attention"] == attention
    assert info["num_classes"] == ARCHS[ref_name][3]
    assert info["attention_param"] == (REDUCTION[attention] if attention in ("se", "cbam") else None)
    if attention != "none":
        assert info["layout"] == "original"
        assert EVIDENCE[ref_name][attention] in info["evidence"]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "cifar_resnet20", "cifar_wrn16_8", "alexnet"])
@pytest.mark.parametrize("attention", ["none", "simam", "se", "cbam", "eca", "srm", "gc"])
def test_inspect_our_layout(name: str, attention: str) -> None:
    """Our keys (`.attn.`) show every parametrised type; SimAM and none look alike without model_spec."""
    with torch.device("meta"):
        model = networks.create_model(name, num_classes=7, attention=attention)
    bare = networks.inspect_checkpoint(model.state_dict())
    assert bare["attention"] == (None if attention in ("none", "simam") else attention)
    assert bare["layout"] == ("plain" if attention in ("none", "simam") else "ours")
    assert bare["num_classes"] == 7
    ours = networks.inspect_checkpoint({"model": model.state_dict(), "model_spec": model.model_spec})
    assert (ours["container"], ours["attention"], ours["arch"]) == ("ours", attention, name)


WRONG_CASES = [
    pytest.param(ref_name, attention, wrong, id=f"{ref_name}-{attention}-into-{wrong}")
    for ref_name in ["resnet50", "mobilenet_v2", "cifar_resnet20", "cifar_preresnet20_bottleneck", "cifar_wrn16_8"]
    for attention in ATTENTIONS
    for wrong in ATTENTIONS
    if wrong != attention
]


@pytest.mark.parametrize("ref_name,attention,wrong", WRONG_CASES)
def test_original_checkpoint_into_wrong_attention_is_refused(ref_name: str, attention: str, wrong: str) -> None:
    name, kwargs, _, classes = ARCHS[ref_name]
    model = networks.create_model(name, num_classes=classes, attention=wrong, **kwargs)
    with pytest.raises(WeightsError) as excinfo:
        networks.load_weights(model, original_file(ref_name, attention))
    message = one_line_error(excinfo)
    assert f"attention={wrong}" in message, message
    assert EXPECTED_FLAGS[(networks.model_info(name).family, attention)] in message, message
    if attention != "none":
        assert EVIDENCE[ref_name][attention] in message, message


def test_readme_evaluation_command_case(tmp_path: Path) -> None:
    """The original README's `-e --resume` of a SimAM-R18 file, typed without --attention_type."""
    path = save(original_file("resnet18", "simam"), tmp_path / "simam_r18.pth.tar")
    info = networks.inspect_checkpoint(path)  # a path works as well as the loaded object
    assert (info["attention"], info["arch"], info["num_classes"]) == ("simam", "resnet18", 1000)
    with pytest.raises(WeightsError, match="SimAM-ResNet-18 weights .* add --attention_type simam --attention_param 0.1"):
        networks.load_weights(networks.create_model("resnet18", num_classes=1000, attention="none"), path)
    # and the right model loads it, with the same logits as the original network
    original = reference("resnet18", "simam", 0.1)
    path = save(pack(original, "simam", "resnet18"), tmp_path / "r18.pth.tar")
    model = ours("resnet18", "simam", 0.1)
    networks.load_weights(model, path)
    assert_same_logits(model, original, 64)


def test_plain_bare_state_dict_still_loads_into_simam() -> None:
    """A bare plain state dict (e.g. torchvision's) cannot say none or SimAM: loading stays allowed."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    report = networks.load_weights(networks.create_model("resnet18", num_classes=1000, attention="simam"), tv.state_dict())
    assert report.missing_keys == [] and report.unexpected_keys == []
