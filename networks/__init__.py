"""The SimAM model zoo: ImageNet and CIFAR ConvNets with SimAM, SE, CBAM, ECA, SRM or GC attention.

    import networks
    model = networks.create_model("resnet50", num_classes=1000, attention="simam", attention_kwargs={"e_lambda": 0.1})
    networks.load_weights(model, "checkpoint.pth.tar")   # ours, the SimAM code's, or torchvision's
    networks.inspect_checkpoint(torch.load("checkpoint.pth.tar"))  # layout, attention, classes read from the keys
    networks.save_weights(model, "r50.pth", format="original")      # the SimAM code's / mmdetection's key names
    params, macs = networks.count_params_flops(model, (1, 3, 224, 224))

Importing `networks` also registers every architecture x attention type with timm
(`timm.create_model("simam_resnet50")`; names in networks/timm_zoo.py).
"""
from .attention import create_attention, list_attentions
from .checkpoint_info import inspect_checkpoint
from .export import save_weights
from .profile import count_params_flops
from .registry import create_model, list_models, model_info, register_model
from .timm_zoo import list_timm_models, register_timm_models, timm_name
from .weights import load_weights

register_timm_models()

__all__ = [
    "count_params_flops", "create_attention", "create_model", "inspect_checkpoint", "list_attentions", "list_models",
    "list_timm_models", "load_weights", "model_info", "register_model", "register_timm_models", "save_weights", "timm_name",
]
