"""What the scripts share: one command-line plumbing, the published SimAM numbers, and networks and
data rebuilt from this project's checkpoints.

    from scripts.common import make_parser, run_main

    def main(argv=None) -> int:
        return run_main(_main, argv)          # UserError anywhere -> `error: ...` on stderr, exit 2

Plain functions on paths and dicts (no plotting). Reading run directories is scripts/runs.py.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn, Optional, Sequence

from engine.errors import UserError
from networks.registry import SIMAM_CIFAR_NAMES

__all__ = [
    "OneLineParser", "Published", "UserError", "attention_column", "checkpoint_meta", "class_names", "config_num_classes",
    "default_paper_dir", "find_paper_dir", "group_items", "load_checkpoint_model", "lookup_published", "lookup_published_params",
    "make_parser", "mean_std", "model_from_config", "model_from_spec", "paper_arch_name", "paper_block", "plain_simam",
    "read_paper_csv", "read_published", "read_published_params", "resolve_data_root", "run_main", "unnormalise", "val_dataset",
]

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ command line
class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (UserError, exit code 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def make_parser(prog: str, doc: Optional[str]) -> OneLineParser:
    """The parser of a script: its module docstring (with the example commands) as --help text."""
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def run_main(body: Callable[[list[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """body(argv) (sys.argv[1:] by default); a UserError raised anywhere in it is one `error:` line, exit code 2."""
    try:
        return body(list(sys.argv[1:] if argv is None else argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------ small tools
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; nan for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def group_items(items: Iterable[Any], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
    """Order-preserving group-by."""
    out: dict[Any, list[Any]] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


@contextlib.contextmanager
def plain_simam() -> Iterator[None]:
    """Inside: SimAM modules run the plain formula (plain autograd, no torch.compile start-up, which a few
    forward passes do not repay on a CPU), unless SIMAM_IMPL already chose one; restored afterwards."""
    try:
        from networks.attention import simam_fused
    except ImportError:  # no fused implementation: nothing to choose
        yield
        return
    get = getattr(simam_fused, "impl_override", None)
    set_ = getattr(simam_fused, "set_impl_override", None)
    if get is None or set_ is None:
        yield
        return
    previous = get()
    set_(previous or "reference")
    try:
        yield
    finally:
        set_(previous)


# ------------------------------------------------------------------------------------ published numbers
# registry name -> the arch column of shared/paper/*.csv (the original CIFAR script's names)
_CIFAR_PAPER_ARCHS = {name: simam for simam, name in SIMAM_CIFAR_NAMES.items()}


@dataclass(frozen=True)
class Published:
    """A published result of shared/paper/cifar.csv or imagenet.csv."""

    top1: float
    top5: Optional[float]
    attention_param: str
    source: str
    file: str
    block: str = ""  # the csv's block column ("" when the file has none: imagenet.csv)
    params_M: Optional[str] = None  # as published (its precision kept)
    flops_G: Optional[str] = None  # thop MACs of an older thop, as published (imagenet.csv)


def default_paper_dir() -> Path:
    """$SIMAM_PAPER_DIR, else <repo>/../shared/paper."""
    env = os.environ.get("SIMAM_PAPER_DIR")
    return Path(env) if env else REPO.parent / "shared" / "paper"


def find_paper_dir() -> Optional[Path]:
    """default_paper_dir() if it exists, else None."""
    paper = default_paper_dir()
    return paper if paper.is_dir() else None


def paper_arch_name(dataset: str, arch: str) -> str:
    """Registry name -> the arch column of the paper csv files (CIFAR models carry a `cifar_` prefix here)."""
    if dataset.startswith("cifar") and arch.startswith("cifar_"):
        return _CIFAR_PAPER_ARCHS.get(arch, arch[len("cifar_"):])
    return arch


def _default_block(arch: str) -> str:
    """The `block` default of a registry architecture's function (e.g. bottleneck for cifar_resnet164), or ""."""
    from networks import registry

    fn = getattr(registry, arch, None)
    try:
        param = inspect.signature(fn).parameters.get("block") if fn is not None else None
    except (TypeError, ValueError):
        param = None
    return str(param.default) if param is not None and isinstance(param.default, str) else ""


def paper_block(arch: str, block: Optional[str] = None) -> str:
    """The block column of shared/paper/*.csv for a registry arch and its `model.block` (None: the arch's default).

    CIFAR (pre)ResNets: basic/bottleneck, prebasic/prebottleneck; WRNs: widebasic; MobileNetV2s:
    inverted_residual; ImageNet ResNets: basic up to 34 layers, else bottleneck; "" for the others.
    """
    name = arch[len("cifar_"):] if arch.startswith("cifar_") else arch
    block = block or _default_block(arch)
    if name.startswith("preresnet"):
        return "pre" + (block or "basic")
    if name.startswith("resnet") and arch.startswith("cifar_"):
        return block or "basic"
    if name.startswith(("wrn", "wideresnet")):
        return "widebasic"
    if "mobilenet" in name:
        return "inverted_residual"
    if name in ("resnet18", "resnet34"):
        return "basic"
    if name.startswith(("resnet", "resnext")):
        return "bottleneck"
    return block or ""


def attention_column(attention: str, kwargs: Optional[dict] = None) -> str:
    """params.csv's column of an attention type and its options: none, simam, se_r16, cbam_r4, ... ('' if it has none)."""
    kwargs = kwargs or {}
    if attention in ("none", "simam"):
        return attention
    if attention in ("se", "cbam"):
        try:
            return f"{attention}_r{int(kwargs.get('reduction', 16))}"
        except (TypeError, ValueError):
            return ""
    return ""


def read_paper_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a csv file of shared/paper, without '#' comment lines; [] if it does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _float(v: Optional[str]) -> Optional[float]:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def read_published(paper_dir: os.PathLike | str) -> dict[tuple[str, str, str, str], Published]:
    """{(dataset, paper arch, block, attention): Published} of cifar.csv and imagenet.csv (missing files: empty)."""
    paper_dir = Path(paper_dir)
    table: dict[tuple[str, str, str, str], Published] = {}
    for file, dataset in (("cifar.csv", None), ("imagenet.csv", "imagenet")):
        for row in read_paper_csv(paper_dir / file):
            top1 = _float(row.get("top1"))
            if top1 is None:
                continue
            source = row.get("source", "") + (f"; runs: {row['runs']}" if row.get("runs") else "")
            block = row.get("block") or ""
            table[(dataset or row["dataset"], row["arch"], block, row["attention"])] = Published(
                top1, _float(row.get("top5")), row.get("attention_param", ""), source, file, block,
                row.get("params_M") or None, row.get("flops_G") or None)
    return table


def lookup_published(table: dict, dataset: str, arch: str, attention: str, block: Optional[str] = None) -> Optional[Published]:
    """The published row of (dataset, registry arch with its block, attention), or None.

    A row whose block differs from the network's (e.g. a bottleneck ResNet-164 against the basic
    one) is not that network's; a row without a block (imagenet.csv) matches by name.
    """
    ours = paper_block(arch, block)
    name = paper_arch_name(dataset, arch)
    for (ds, a, b, att), pub in table.items():
        if (ds, a, att) == (dataset, name, attention) and (not b or not ours or b == ours):
            return pub
    return None


def read_published_params(paper_dir: os.PathLike | str) -> dict[tuple[str, str, str, str], str]:
    """{(dataset, paper arch, block, params.csv column): params in millions as published} of params.csv, cifar.csv
    and imagenet.csv; params.csv (4 decimals) wins over the 2 decimals of imagenet.csv."""
    paper_dir = Path(paper_dir)
    out: dict[tuple[str, str, str, str], str] = {}
    for file in ("cifar.csv", "imagenet.csv"):
        for row in read_paper_csv(paper_dir / file):
            dataset = row.get("dataset") or "imagenet"
            block = row.get("block") or (paper_block(row["arch"]) if dataset == "imagenet" else "")
            column = attention_column(row.get("attention", ""))
            if _float(row.get("params_M")) is not None and column:
                out[(dataset, row["arch"], block, column)] = row["params_M"]
    for row in read_paper_csv(paper_dir / "params.csv"):
        for column, text in row.items():
            if column not in ("dataset", "arch", "block") and _float(text) is not None:
                out[(row["dataset"], row["arch"], row.get("block") or "", column)] = text
    return out


def lookup_published_params(table: dict, dataset: str, arch: str, attention: str, attention_kwargs: Optional[dict] = None,
                            block: Optional[str] = None) -> Optional[str]:
    """The published parameter count (millions, as published) of this exact network (block and SE/CBAM reduction included), or None."""
    column = attention_column(attention, attention_kwargs)
    if not column:
        return None
    return table.get((dataset, paper_arch_name(dataset, arch), paper_block(arch, block), column))


# ------------------------------------------------------------------------------------ networks
_DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000, "digits": 10, "fake": 10}  # engine.data's defaults


def config_num_classes(config: dict, spec: Optional[dict] = None) -> int:
    """Head size: the checkpoint's model_spec, else data.num_classes, else the data set's (or the architecture's) usual one."""
    if spec and spec.get("num_classes"):
        return int(spec["num_classes"])
    data = config.get("data") or {}
    if data.get("num_classes"):
        return int(data["num_classes"])
    if data.get("name") in _DATASET_CLASSES:
        return _DATASET_CLASSES[data["name"]]
    import networks

    return networks.model_info(config["model"]["arch"]).num_classes


def _model_kwargs(config: dict) -> dict:
    model = config.get("model") or {}
    kwargs = dict(model.get("kwargs") or {})
    if model.get("block"):
        kwargs["block"] = model["block"]
    return kwargs


def _create(arch: str, num_classes: int, attention: str, attention_kwargs: dict, kwargs: dict) -> Any:
    import networks

    try:
        return networks.create_model(arch, num_classes=num_classes, attention=attention, attention_kwargs=attention_kwargs, **kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(str(e).splitlines()[0]) from None


def model_from_config(config: dict, num_classes: int) -> Any:
    """The network of a run's (resolved) config: model.arch/block/kwargs with `attention` (its name and options)."""
    att = dict(config.get("attention") or {})
    name = str(att.pop("name", "none"))
    return _create(config["model"]["arch"], num_classes, name, att, _model_kwargs(config))


def model_from_spec(spec: dict, config: Optional[dict] = None) -> Any:
    """The network a checkpoint's model_spec describes (arch, attention and its options, classes), with the
    block and model options of its stored config."""
    return _create(str(spec["arch"]), int(spec["num_classes"]), str(spec.get("attention") or "none"),
                   dict(spec.get("attention_kwargs") or {}), _model_kwargs(config or {}))


def load_checkpoint_model(path: os.PathLike | str, trust: bool = False) -> tuple[Any, dict, dict]:
    """(model in eval mode with the weights of `path`, resolved config, model_spec) of one of our checkpoints."""
    import networks
    from networks.weights import WeightsError, read_checkpoint

    path = Path(path)
    try:
        state = read_checkpoint(path, trust=trust)
    except WeightsError as e:
        raise UserError(str(e)) from None
    if not isinstance(state, dict) or "config" not in state or "model_spec" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no stored config/model_spec): "
                        "use one of run_dir/checkpoints/*.pth")
    config, spec = state["config"], state["model_spec"]
    model = model_from_spec({**spec, "num_classes": config_num_classes(config, spec)}, config)
    try:
        networks.load_weights(model, state)
    except WeightsError as e:
        raise UserError(f"{path}: {e}") from None
    model.checkpoint_info = {"epoch": state.get("epoch"), "torch_version": state.get("torch_version"), "path": str(path)}
    return model.eval(), config, spec


def checkpoint_meta(path: os.PathLike | str) -> dict:
    """epoch, batch, torch_version, model_spec and best_acc1 of a checkpoint, read without loading its tensors ({} if unreadable)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an old format, a file being written: no metadata
        return {}
    if not isinstance(state, dict):
        return {}
    return {k: state.get(k) for k in ("epoch", "batch", "torch_version", "model_spec", "best_acc1")}


# ------------------------------------------------------------------------------------ data
def resolve_data_root(root: Optional[str]) -> Optional[str]:
    """A relative data.root as the run saw it (cwd), else relative to the repository."""
    if not root or os.path.isabs(root) or os.path.exists(root):
        return root
    alt = REPO / root
    return str(alt) if alt.exists() else root


def _eval_options(d: dict) -> dict:
    """The run's data.crop_pct, data.interpolation and data.class_order (those it set), which shape validation."""
    from engine import data as data_lib

    wanted = {k: d[k] for k in ("crop_pct", "interpolation", "class_order") if d.get(k) is not None}
    accepted = inspect.signature(data_lib.build_datasets).parameters
    missing = [k for k in wanted if k not in accepted]
    if missing:
        raise UserError(f"the run sets data.{missing[0]}={wanted[missing[0]]} but engine.data.build_datasets has no such option")
    return wanted


def val_dataset(config: dict, *, name: Optional[str] = None, root: Optional[str] = None, num_classes: Optional[int] = None) -> Any:
    """The validation set (normalised CHW float tensors, int labels) of a run's config, as engine.data builds it;
    `name`/`root` replace the config's data set. UserError when the data are not there (nothing is downloaded)."""
    from engine import data as data_lib

    d = dict(config.get("data") or {})
    name = name or d.get("name")
    root = resolve_data_root(root or d.get("root"))
    try:
        _, val, _ = data_lib.build_datasets(
            name, root, augment=d.get("augment", "none"), image_size=int(d["image_size"]),
            num_classes=num_classes or d.get("num_classes"), num_train=int(d.get("num_train", 512)),
            num_val=int(d.get("num_val", 128)), download=False, seed=int(config.get("seed", 0)),
            bad_images=d.get("bad_images", "fail"), **_eval_options(d))
        return val
    except (UserError, ValueError, OSError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot open the validation data of {name!r} at {root}: {reason}") from None


def class_names(dataset: Any) -> Optional[list[str]]:
    """Class names of a (wrapped) dataset, if it has them."""
    inner = getattr(dataset, "dataset", dataset)
    names = getattr(inner, "classes", None)
    return list(names) if names else None


def unnormalise(image: Any, augment: str) -> Any:
    """Normalised CHW tensor -> HWC float numpy array in [0, 1] for display (an unknown recipe: as "none")."""
    import torch

    from engine import data as data_lib

    try:
        mean, std = data_lib.normalization(augment)
    except ValueError:
        mean, std = data_lib.normalization("none")
    x = image.detach().float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0).numpy()
