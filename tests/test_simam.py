"""SimAM against the paper's formula, its numerics (gradcheck, fp16/bf16, channels_last, 1x1 maps),
and where the networks put it.

The reference below is written from the paper (Yang et al., ICML 2021, eq. 5 and its code listing),
independently of networks/attention/simam.py:

    y = x * sigmoid((x - mu)^2 / (4 * (var + lambda)) + 0.5),   var = sum((x - mu)^2) / (H*W - 1)
"""
from __future__ import annotations

import math

import pytest
import torch

import networks
from networks.attention import SimAM, simam_reference


def paper_simam(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    """The paper's formula in float64, per sample and channel over the spatial positions."""
    x = x.double()
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)
    mu = flat.mean(dim=2, keepdim=True)
    var = ((flat - mu) ** 2).sum(dim=2, keepdim=True) / (h * w - 1)
    y = flat * torch.sigmoid((flat - mu) ** 2 / (4 * (var + e_lambda)) + 0.5)
    return y.reshape(b, c, h, w)


pytestmark = pytest.mark.usefixtures("single_thread")

SHAPES = [(2, 3, 7, 5), (1, 8, 14, 14), (4, 16, 2, 2), (2, 4, 32, 32)]
LAMBDAS = [1e-4, 0.1, 1e-5]
# output rounding of each dtype: the unit roundoff is 2**-11 (fp16) and 2**-8 (bf16); the
# statistics are computed in fp32, so the output is the fp32 result rounded once
DTYPE_RTOL = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("e_lambda", LAMBDAS)
def test_float64_matches_the_paper(shape, e_lambda):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    torch.testing.assert_close(SimAM(shape[1], e_lambda=e_lambda)(x), paper_simam(x, e_lambda), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("e_lambda", LAMBDAS)
def test_float32_matches_the_paper_to_1e5(shape, e_lambda):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    y = SimAM(shape[1], e_lambda=e_lambda)(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), paper_simam(x, e_lambda), rtol=1e-5, atol=0)


def test_reference_function_matches_the_module():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(SimAM(3, e_lambda=0.1)(x), simam_reference(x, 0.1))
    torch.testing.assert_close(simam_reference(x, 0.1).double(), paper_simam(x, 0.1), rtol=1e-5, atol=0)


def test_default_lambda_and_channels_argument():
    m = networks.create_attention("simam", 64)
    assert isinstance(m, SimAM)
    assert m.e_lambda == pytest.approx(1e-4)  # the paper's lambda (CIFAR); ImageNet uses 0.1
    assert list(m.parameters()) == [] and list(m.buffers()) == []


@pytest.mark.parametrize("e_lambda", [1e-4, 0.1])
def test_gradcheck_float64(e_lambda):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    m = SimAM(3, e_lambda=e_lambda)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_half_precision_input(dtype, scale):
    """fp16/bf16 inputs: output in the input dtype, equal to the fp32 result up to one rounding.

    With scale 100 on a 32x32 map the sum of squared deviations (~1e7) overflows fp16 (max 65504):
    only statistics computed in fp32 give the right result.
    """
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 32, 32) * scale).to(dtype)
    y = SimAM(8, e_lambda=1e-4)(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    expected = paper_simam(x.float(), 1e-4).float()  # same input values, exact statistics
    torch.testing.assert_close(y.float(), expected, rtol=DTYPE_RTOL[dtype], atol=1e-5 * scale)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_cpu_autocast_bfloat16(input_dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = SimAM(8, e_lambda=0.1)(x)
    assert y.dtype == input_dtype
    expected = paper_simam(x.float(), 0.1).float()
    rtol = DTYPE_RTOL.get(input_dtype, 1e-5)
    torch.testing.assert_close(y.float(), expected, rtol=rtol, atol=1e-5)


def test_cpu_autocast_after_a_convolution():
    """In a network under autocast SimAM sees the conv's bf16 output and keeps that dtype."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = SimAM(8, e_lambda=0.1)(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), paper_simam(h.float(), 0.1).float(), rtol=DTYPE_RTOL[torch.bfloat16], atol=1e-5)


def test_channels_last_equals_contiguous():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 11)
    m = SimAM(16, e_lambda=1e-4)
    y = m(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, m(x))
    torch.testing.assert_close(y.double(), paper_simam(x, 1e-4), rtol=1e-5, atol=0)


def test_channels_last_gradients_equal_contiguous():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 11)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.clone(memory_format=fmt).requires_grad_()
        SimAM(16)(xi).pow(2).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_one_by_one_map_is_finite(dtype):
    """H*W - 1 = 0 divides 0 by 0 in the original code; here the weight is sigmoid(0.5)."""
    x = torch.randn(4, 8, 1, 1).to(dtype)
    x.requires_grad_()
    y = SimAM(8, e_lambda=1e-4)(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    expected = x.detach().double() * (1 / (1 + math.exp(-0.5)))
    torch.testing.assert_close(y.detach().double(), expected, rtol=DTYPE_RTOL.get(dtype, 1e-6), atol=1e-6)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_constant_map_is_finite():
    """No spread at all (var = 0): the weight is sigmoid(0.5) as long as lambda > 0."""
    x = torch.full((2, 3, 5, 5), 2.5)
    torch.testing.assert_close(SimAM(3, e_lambda=1e-4)(x), x * torch.sigmoid(torch.tensor(0.5)))


# --------------------------------------------------------------------------------------------
# Placement inside the networks, checked through forward hooks
# --------------------------------------------------------------------------------------------

class Recorder:
    """Records the first input and the output of named submodules during one forward pass."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        modules = dict(model.named_modules())
        for name in names:
            # clones: the networks use inplace ReLUs
            self.handles.append(modules[name].register_forward_pre_hook(
                lambda m, args, name=name: self.inputs.__setitem__(name, args[0].detach().clone())))
            self.handles.append(modules[name].register_forward_hook(
                lambda m, args, out, name=name: self.outputs.__setitem__(name, out.detach().clone())))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def run_recorded(model: torch.nn.Module, names: list[str], size: int) -> Recorder:
    torch.manual_seed(0)
    rec = Recorder(model.eval(), names)
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    rec.remove()
    missing = [n for n in names if n not in rec.outputs]
    assert not missing, f"modules not called: {missing}"
    return rec


def build(name: str, attention: str) -> torch.nn.Module:
    return networks.create_model(name, num_classes=networks.model_info(name).num_classes, attention=attention)


def blocks_with_attention(model: torch.nn.Module) -> list[str]:
    """Names of the modules that own an `attn` submodule."""
    names = [n for n, m in model.named_modules() if getattr(m, "attn", None) is not None]
    assert names, "no attention module found"
    return names


def assert_flows(rec: Recorder, src: str, dst: str) -> None:
    """The output of module `src` is the (first) input of module `dst`."""
    assert torch.equal(rec.outputs[src], rec.inputs[dst]), f"{dst} does not take the output of {src}"


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_basic_block_simam_between_conv2_and_bn2(name):
    model = build(name, "simam")
    blocks = blocks_with_attention(model)
    assert len(blocks) == sum(len(getattr(model, f"layer{i}")) for i in range(1, 5))
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv2", "attn", "bn2")], 64)
    for b in blocks:
        assert isinstance(model.get_submodule(f"{b}.attn"), networks.attention.SimAM)
        assert_flows(rec, f"{b}.conv2", f"{b}.attn")
        assert_flows(rec, f"{b}.attn", f"{b}.bn2")


@pytest.mark.parametrize("attention", ["se", "cbam", "eca", "srm", "gc"])
def test_basic_block_other_attentions_after_bn2(attention):
    model = build("resnet18", attention)
    blocks = blocks_with_attention(model)
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv2", "attn", "bn2")], 64)
    for b in blocks:
        assert_flows(rec, f"{b}.conv2", f"{b}.bn2")
        assert_flows(rec, f"{b}.bn2", f"{b}.attn")


def test_layer1_first_block_simam_and_se():
    """The brief's example: layer1[0].attn takes conv2's output (SimAM) or bn2's output (SE)."""
    for attention, src in (("simam", "conv2"), ("se", "bn2")):
        rec = run_recorded(build("resnet18", attention), ["layer1.0.conv2", "layer1.0.bn2", "layer1.0.attn"], 64)
        assert_flows(rec, f"layer1.0.{src}", "layer1.0.attn")


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_bottleneck_simam_after_conv2_with_width_channels(name):
    model = build(name, "simam")
    blocks = blocks_with_attention(model)
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv2", "attn", "bn2")], 64)
    for b in blocks:
        block = model.get_submodule(b)
        width = block.conv1.out_channels  # planes * base_width / 64 * groups
        assert block.conv2.in_channels == block.conv2.out_channels == width
        assert width != block.conv3.out_channels  # not the block's output width
        assert rec.inputs[f"{b}.attn"].shape[1] == width
        assert_flows(rec, f"{b}.conv2", f"{b}.attn")
        assert_flows(rec, f"{b}.attn", f"{b}.bn2")


def test_bottleneck_se_after_bn3():
    model = build("resnet50", "se")
    blocks = blocks_with_attention(model)
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("bn3", "attn")], 64)
    for b in blocks:
        assert rec.inputs[f"{b}.attn"].shape[1] == model.get_submodule(b).conv3.out_channels
        assert_flows(rec, f"{b}.bn3", f"{b}.attn")


def test_mobilenet_v2_simam_after_the_depthwise_conv():
    model = build("mobilenet_v2", "simam")
    blocks = blocks_with_attention(model)
    assert blocks[0] == "features.1" and "features.2" in blocks
    names = []
    for b in blocks:
        names += [f"{b}.conv.{len(model.get_submodule(b).conv) - 3}.{i}" for i in (0, 1)] + [f"{b}.attn"]
    rec = run_recorded(model, names, 64)
    for b in blocks:
        dw = f"{b}.conv.{len(model.get_submodule(b).conv) - 3}"
        conv = model.get_submodule(f"{dw}.0")
        assert conv.groups == conv.in_channels == conv.out_channels  # depthwise
        assert_flows(rec, f"{dw}.0", f"{b}.attn")
        assert_flows(rec, f"{b}.attn", f"{dw}.1")
    # the brief's example, spelled out
    dw_conv = model.features[2].conv[-3][0]
    assert dw_conv is model.get_submodule("features.2.conv.1.0")
    assert torch.equal(rec.outputs["features.2.conv.1.0"], rec.inputs["features.2.attn"])


def test_cifar_mobilenetv2_simam_after_the_depthwise_conv():
    model = build("cifar_mobilenetv2", "simam")
    blocks = blocks_with_attention(model)
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv2", "attn", "bn2")], 32)
    for b in blocks:
        assert model.get_submodule(f"{b}.conv2").groups == model.get_submodule(f"{b}.conv2").in_channels
        assert_flows(rec, f"{b}.conv2", f"{b}.attn")
        assert_flows(rec, f"{b}.attn", f"{b}.bn2")


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet164"])
def test_cifar_resnet_simam_between_conv2_and_bn2(name):
    model = build(name, "simam")
    blocks = blocks_with_attention(model)
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv2", "attn", "bn2")], 32)
    for b in blocks:
        assert_flows(rec, f"{b}.conv2", f"{b}.attn")
        assert_flows(rec, f"{b}.attn", f"{b}.bn2")


@pytest.mark.parametrize("attention", ["simam", "se"])
@pytest.mark.parametrize("name", ["cifar_preresnet56", "cifar_wrn16_8"])
def test_preactivation_attention_after_the_last_conv(name, attention):
    """Pre-activation basic blocks (PreResNet, WRN): the attention follows conv2, for every type."""
    model = build(name, attention)
    blocks = blocks_with_attention(model)
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv2", "attn")] + blocks, 32)
    for b in blocks:
        block = model.get_submodule(b)
        assert not any(isinstance(m, torch.nn.Conv2d) for n, m in block.named_children() if n not in ("conv1", "conv2", "shortcut", "convShortcut"))
        assert_flows(rec, f"{b}.conv2", f"{b}.attn")
        # nothing between the attention and the residual addition: block output - attn output
        # is the shortcut, i.e. the input itself where the shapes agree
        x, out, att = rec.inputs[b], rec.outputs[b], rec.outputs[f"{b}.attn"]
        if x.shape == out.shape:
            assert torch.equal(out, att + x)


def test_alexnet_simam_after_every_conv_before_relu():
    model = build("alexnet", "simam")
    blocks = blocks_with_attention(model)
    assert len(blocks) == 5
    rec = run_recorded(model, [f"{b}.{m}" for b in blocks for m in ("conv", "attn", "relu")], 128)
    for b in blocks:
        assert_flows(rec, f"{b}.conv", f"{b}.attn")
        assert_flows(rec, f"{b}.attn", f"{b}.relu")
