"""The SimAM model zoo: ImageNet and CIFAR ConvNets with SimAM, SE, CBAM, ECA, SRM or GC attention.

    import networks
    model = networks.create_model("resnet50", num_classes=1000, attention="simam", attention_kwargs={"e_lambda": 0.1})
    networks.load_weights(model, "checkpoint.pth.tar")   # ours, the SimAM code's, or torchvision's
    params, macs = networks.count_params_flops(model, (1, 3, 224, 224))
"""
from .attention import create_attention, list_attentions
from .checkpoint_info import inspect_checkpoint
from .export import save_weights
from .profile import count_params_flops
from .registry import create_model, list_models, model_info, register_model
from .weights import load_weights

__all__ = [
    "count_params_flops", "create_attention", "create_model", "inspect_checkpoint", "list_attentions", "list_models",
    "load_weights", "model_info", "register_model", "save_weights",
]
