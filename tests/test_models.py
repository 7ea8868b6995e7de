"""Registry-parametrized tests of networks/: every architecture x every attention type on CPU.

Each model is built as `create_model` builds it for training and checked for output shape,
finite outputs, a finite gradient on every parameter, its recorded `model_spec`, and that
profiling with thop leaves it untouched. Inputs are the smallest the architecture allows that
still exercise every stage (see `input_size`), so the whole file runs in a few minutes on 2 cores.
"""
from __future__ import annotations

import copy
import functools
import inspect
from typing import Optional

import pytest
import torch

import networks

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = networks.list_models()
ATTENTIONS = networks.list_attentions()

# the heaviest cases (> 40M parameters, or GMACs per image even at the reduced input size):
# ~1.5 s per test with one thread, several seconds with two on a busy 2-core machine; marked
# slow so that `-m "not slow"` skips them locally (56 tests); CI runs them
SLOW_MODELS = {"cifar_wrn28_10", "cifar_wrn40_10", "resnet101", "resnet152"}


def input_size(name: str) -> int:
    """Side of the square test input: small, but every stage still sees a map of at least 2x2."""
    if name == "alexnet":
        return 128  # its classifier expects the 3x3 map of a 128x128 input
    if networks.model_info(name).family == "imagenet":
        return 64  # ResNets/MobileNetV2 pool adaptively; 64 -> 2x2 final map
    return 16  # CIFAR networks pool adaptively too; 16 -> 4x4 final map (MobileNetV2: 2x2)


def model_cases(attentions=ATTENTIONS) -> list:
    """(name, attention) pairs of the whole registry, heavy ones marked slow."""
    return [
        pytest.param((name, att), id=f"{name}-{att}", marks=[pytest.mark.slow] if name in SLOW_MODELS else [])
        for name in MODELS
        for att in attentions
    ]


def build(name: str, attention=None, device: str = "cpu", **kwargs) -> torch.nn.Module:
    """The registry model with its usual number of classes."""
    with torch.device(device):
        return networks.create_model(name, num_classes=networks.model_info(name).num_classes, attention=attention, **kwargs)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Every architecture x attention: profiling leaves the model untouched, forward, backward
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="class")
def model_case(request):
    """(name, attention, model in train mode), built once per case for all tests of the class.

    The class-scoped parameter makes pytest run the class's tests case by case, in definition
    order, so each model is built once (building the large ones costs as much as the tests).
    """
    name, attention = request.param
    torch.manual_seed(0)
    return name, attention, build(name, attention).train()


@pytest.mark.parametrize("model_case", model_cases(), indirect=True, scope="class")
class TestEveryModel:
    def test_profiling_leaves_model_untouched(self, model_case):
        """thop registers total_ops/total_params buffers on what it profiles (thop #82/#168)."""
        name, _, model = model_case
        before = {k: v.clone() for k, v in model.state_dict().items()}

        s = input_size(name)
        params, macs = networks.count_params_flops(model, (1, 3, s, s))

        after = model.state_dict()
        assert not [k for k in after if "total_ops" in k or "total_params" in k]
        assert list(after) == list(before)
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, f"profiling changed {changed}"  # e.g. BN statistics of a train-mode pass
        assert model.training
        hooked = [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
        assert not hooked, f"hooks left on {hooked}"
        assert params == num_params(model)
        assert macs > 0

    def test_forward_backward(self, model_case):
        name, attention, model = model_case
        num_classes = networks.model_info(name).num_classes
        assert model.model_spec == {"arch": name, "attention": attention, "num_classes": num_classes,
                                     "attention_kwargs": {k: float(v) for k, v in networks.attention.resolved_kwargs(attention).items() if k != "impl"}}

        s = input_size(name)
        out = model.train()(torch.randn(2, 3, s, s))  # train mode: BN/SRM batch statistics need batch > 1
        assert out.shape == (2, num_classes)
        assert torch.isfinite(out).all()

        out.sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without a gradient: {missing}"
        non_finite = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
        assert not non_finite, f"parameters with a non-finite gradient: {non_finite}"


# --------------------------------------------------------------------------------------------
# Parameters and checkpoint keys (built on the meta device: shapes only, no initialisation cost)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def meta_summary(name: str, attention: Optional[str]) -> tuple[int, tuple[str, ...], dict]:
    """(parameter count, state_dict keys, model_spec) of the model built on the meta device."""
    model = build(name, attention, device="meta")
    return num_params(model), tuple(model.state_dict()), model.model_spec


@pytest.mark.parametrize("name", MODELS)
def test_attention_none_is_the_plain_network(name: str):
    plain_params, plain_keys, plain_spec = meta_summary(name, None)
    none_params, none_keys, _ = meta_summary(name, "none")
    assert none_params == plain_params
    assert none_keys == plain_keys
    assert plain_spec["attention"] == "none"


@pytest.mark.parametrize("name", MODELS)
def test_simam_adds_no_parameters_and_no_keys(name: str):
    assert meta_summary(name, "simam")[:2] == meta_summary(name, "none")[:2]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("attention", [a for a in ATTENTIONS if a not in ("none", "simam")])
def test_other_attentions_add_parameters(name: str, attention: str):
    assert meta_summary(name, attention)[0] > meta_summary(name, "none")[0]


# --------------------------------------------------------------------------------------------
# Errors: ValueError naming the valid choices
# --------------------------------------------------------------------------------------------

def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as excinfo:
        networks.create_model("resnet19", num_classes=10)
    for name in MODELS:
        assert name in str(excinfo.value)
    with pytest.raises(ValueError, match="resnet18"):
        networks.model_info("resnet19")


@pytest.mark.parametrize("create", ["create_model", "create_attention"])
def test_unknown_attention_lists_valid_names(create: str):
    with pytest.raises(ValueError) as excinfo:
        if create == "create_model":
            networks.create_model("resnet18", num_classes=10, attention="sim_am")
        else:
            networks.create_attention("sim_am", 64)
    for name in ATTENTIONS:
        assert name in str(excinfo.value)


# the options of each attention type (written out here, not read from the code under test)
ATTENTION_OPTIONS = {
    "simam": ["e_lambda"],
    "se": ["reduction"],
    "cbam": ["reduction", "kernel_size"],
    "eca": ["gamma", "beta"],
    "srm": ["eps"],
    "gc": ["ratio"],
}


def test_attention_options_table_covers_the_registry():
    assert sorted(ATTENTION_OPTIONS) == sorted(a for a in ATTENTIONS if a != "none")


@pytest.mark.parametrize("attention", sorted(ATTENTION_OPTIONS))
def test_unknown_attention_option_lists_valid_options(attention: str):
    with pytest.raises(ValueError) as excinfo:
        networks.create_model("cifar_resnet20", num_classes=10, attention=attention, attention_kwargs={"bogus_option": 1})
    message = str(excinfo.value)
    assert "bogus_option" in message
    for option in ATTENTION_OPTIONS[attention]:
        assert option in message


@pytest.mark.parametrize("attention", sorted(ATTENTION_OPTIONS))
def test_known_attention_options_are_accepted(attention: str):
    signature = inspect.signature(networks.create_attention(attention, 64).__class__.__init__)
    kwargs = {k: signature.parameters[k].default for k in ATTENTION_OPTIONS[attention]}
    model = build("cifar_resnet20", attention, device="meta", attention_kwargs=kwargs)
    assert model.model_spec["attention"] == attention


def test_unknown_model_option_raises_value_error():
    with pytest.raises(ValueError, match="resnet18"):
        networks.create_model("resnet18", num_classes=10, bogus_option=1)


# --------------------------------------------------------------------------------------------
# AlexNet: the notebook's layer order; initialisation schemes
# --------------------------------------------------------------------------------------------

# The notebook's network (PaddlePaddle), written out as (layer type, its shape arguments) in
# forward order: each conv is followed by its ReLU; the classifier is Linear -> ReLU -> Dropout
# twice, then the output Linear.
NOTEBOOK_ALEXNET = [
    ("Conv2d", (3, 48, 11, 4, 5)), ("ReLU", ()), ("MaxPool2d", (3, 2)),
    ("Conv2d", (48, 128, 5, 1, 2)), ("ReLU", ()), ("MaxPool2d", (3, 2)),
    ("Conv2d", (128, 192, 3, 1, 1)), ("ReLU", ()),
    ("Conv2d", (192, 192, 3, 1, 1)), ("ReLU", ()),
    ("Conv2d", (192, 128, 3, 1, 1)), ("ReLU", ()), ("MaxPool2d", (3, 2)),
    ("Linear", (1152, 2048)), ("ReLU", ()), ("Dropout", (0.5,)),
    ("Linear", (2048, 2048)), ("ReLU", ()), ("Dropout", (0.5,)),
    ("Linear", (2048, 10)),
]


def _layer_signature(m: torch.nn.Module) -> tuple:
    if isinstance(m, torch.nn.Conv2d):
        return ("Conv2d", (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0]))
    if isinstance(m, torch.nn.MaxPool2d):
        return ("MaxPool2d", (m.kernel_size, m.stride))
    if isinstance(m, torch.nn.Linear):
        return ("Linear", (m.in_features, m.out_features))
    if isinstance(m, torch.nn.Dropout):
        return ("Dropout", (m.p,))
    return (type(m).__name__, ())


def test_alexnet_layer_order_is_the_notebooks():
    """The order in which the forward pass calls the layers, recorded with hooks."""
    model = networks.create_model("alexnet", num_classes=10, attention="none").eval()
    calls = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda mod, *_: calls.append(_layer_signature(mod))) for m in leaves]
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    for h in handles:
        h.remove()
    assert calls == NOTEBOOK_ALEXNET
    assert num_params(model) == 7_524_042


def _reset_in_module_order(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """PyTorch's default initialisation: every layer's own reset_parameters, in construction order."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
            m.reset_parameters()
    return model


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preresnet20", "cifar_mobilenetv2"])
@pytest.mark.parametrize("attention", ["none", "se"])
def test_cifar_original_init_is_pytorchs_default(name: str, attention: str):
    """The SimAM code's CIFAR ResNet/PreResNet/MobileNetV2 have no init code: PyTorch's draws."""
    torch.manual_seed(3)
    model = build(name, attention)  # init="original" is the default
    expected = _reset_in_module_order(copy.deepcopy(model), seed=3)
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    torch.manual_seed(3)
    kaiming = build(name, attention, init="kaiming")
    conv = "conv1.weight"
    assert not torch.equal(kaiming.state_dict()[conv], model.state_dict()[conv])
    # kaiming-normal fan_out exceeds the default's uniform bound 1/sqrt(fan_in) somewhere
    bound = 1 / (3 * 3 * 3) ** 0.5
    assert model.state_dict()[conv].abs().max() <= bound < kaiming.state_dict()[conv].abs().max()


@torch.no_grad()
def test_alexnet_original_init_is_paddles_default():
    """Conv ~ N(0, sqrt(2 / (in * k * k))), Linear ~ U(+-sqrt(6 / (in + out))), biases 0."""
    torch.manual_seed(0)
    model = networks.create_model("alexnet", num_classes=10)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            expected_std = (2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5
            assert abs(float(m.weight.std()) / expected_std - 1) < 0.1, m
        elif isinstance(m, torch.nn.Linear):
            bound = (6.0 / (m.in_features + m.out_features)) ** 0.5
            assert float(m.weight.abs().max()) <= bound
            assert abs(float(m.weight.std()) / (bound / 3 ** 0.5) - 1) < 0.1, m  # std of U(-a, a) is a/sqrt(3)
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0, m


@pytest.mark.parametrize("name", ["resnet18", "cifar_wrn16_8", "mobilenet_v2"])
def test_original_init_of_kaiming_architectures_is_kaiming(name: str):
    """ImageNet ResNets/MobileNetV2 and the WRN had kaiming init in the SimAM code: both schemes agree."""
    torch.manual_seed(1)
    original = build(name, "none")
    torch.manual_seed(1)
    kaiming = build(name, "none", init="kaiming")
    for key, value in original.state_dict().items():
        assert torch.equal(kaiming.state_dict()[key], value), key
    # and it is kaiming-normal fan_out: std sqrt(2 / (k * k * out)) (the WRN code's formula)
    conv = max((m for m in original.modules() if isinstance(m, torch.nn.Conv2d)), key=lambda m: m.weight.numel())
    expected_std = (2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels)) ** 0.5
    assert abs(float(conv.weight.detach().std()) / expected_std - 1) < 0.05


def test_unknown_init_lists_the_schemes():
    with pytest.raises(ValueError, match="original, kaiming"):
        networks.create_model("cifar_resnet20", num_classes=10, init="xavier")
