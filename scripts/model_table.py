"""Parameters and MACs of the model zoo beside the published numbers of shared/paper/.

    python scripts/model_table.py --dataset imagenet
    python scripts/model_table.py --dataset cifar --archs cifar_resnet20,cifar_resnet56 --attentions none,simam,se,se_r4
    python scripts/model_table.py --dataset imagenet --csv imagenet_table.csv --markdown

One row per architecture x attention type: our parameter count, thop's MACs (what the SimAM paper
published as FLOPs), the MACs including the attention modules' elementwise work, and the published
params/FLOPs where shared/paper has them. An attention name may carry an SE/CBAM reduction as in
params.csv's columns (`se_r4`, `cbam_r4`). Counting needs only tensor shapes, so the models are
built and run on PyTorch's meta device by default (no initialisation, no arithmetic: the whole
ImageNet table takes seconds; tests/test_params.py checks that the counts equal those of a CPU
pass); `--device cpu` runs a real forward pass instead.
"""
from __future__ import annotations

import csv
import functools
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

import networks
from networks.attention import get_attn_layer
from networks.profile import profile_model
from scripts.common import (
    UserError, find_paper_dir, lookup_published, lookup_published_params, make_parser, read_published, read_published_params, run_main,
)

COLUMNS = ["arch", "attention", "params_M", "paper_params_M", "d_params_M", "macs_thop_G", "paper_flops_G", "d_macs_G", "macs_G"]
HEADERS = ["arch", "attention", "params (M)", "paper params (M)", "params diff", "thop MACs (G)", "paper FLOPs (G)", "MACs diff", "MACs incl. attention (G)"]


@dataclass(frozen=True)
class AttentionSpec:
    token: str  # as given on the command line, e.g. "se_r4"
    name: str  # registry name, e.g. "se"
    kwargs: dict
    paper_column: str  # params.csv column, e.g. "se_r4"


def parse_attention(token: str) -> AttentionSpec:
    """'simam', 'se' (its default reduction) or 'se_r4' -> attention name, options, params.csv column."""
    valid = networks.list_attentions()
    name, kwargs = token, {}
    match = re.fullmatch(r"([a-z]+)_r(\d+)", token)
    if token not in valid and match and match.group(1) in valid:
        name, kwargs = match.group(1), {"reduction": int(match.group(2))}
    if name not in valid:
        raise UserError(f"unknown attention {token!r}; valid: {', '.join(valid)} (SE/CBAM also as se_r4, cbam_r16, ...)")
    try:
        layer = get_attn_layer(name, **kwargs)  # validates the options without building anything
    except ValueError as e:
        raise UserError(str(e)) from None
    column = name
    if layer is not None and "reduction" in inspect.signature(getattr(layer, "func", layer)).parameters:
        default = inspect.signature(getattr(layer, "func", layer)).parameters["reduction"].default
        column = f"{name}_r{kwargs.get('reduction', default)}"
    return AttentionSpec(token, name, kwargs, column)


def parse_archs(text: Optional[str], dataset: str) -> list[str]:
    """Registry names of `dataset`'s family; all of them when `text` is None."""
    family = networks.list_models(dataset)
    if text is None:
        return family
    archs = [a.strip() for a in text.split(",") if a.strip()]
    for arch in archs:
        if arch not in family:
            where = f" ({networks.model_info(arch).family} family)" if arch in networks.list_models() else ""
            raise UserError(f"unknown {dataset} architecture {arch!r}{where}; valid: {', '.join(family)}")
    return archs


def paper_dataset(arch: str) -> str:
    """The data set whose published rows fit the head the table builds (model_info's usual number of classes)."""
    info = networks.model_info(arch)
    return {1000: "imagenet", 100: "cifar100"}.get(info.num_classes, "cifar10")


def published(paper: Optional[Path], arch: str, spec: AttentionSpec) -> tuple[Optional[str], Optional[str]]:
    """(params_M, flops_G) as published for this architecture (its default block) and attention, None when unpublished.

    params.csv (4 decimals) wins over imagenet.csv (2 decimals) and cifar.csv; FLOPs only without custom options.
    """
    if paper is None:
        return None, None
    dataset = paper_dataset(arch)
    params_table, table = _tables(paper)
    params = lookup_published_params(params_table, dataset, arch, spec.name, {"reduction": int(spec.paper_column.rsplit("_r", 1)[1])}
                                     if "_r" in spec.paper_column else None)
    pub = lookup_published(table, dataset, arch, spec.name) if not spec.kwargs else None
    return params, pub.flops_G if pub else None


@functools.lru_cache(maxsize=4)
def _tables(paper: Path) -> tuple[dict, dict]:
    return read_published_params(paper), read_published(paper)


def profile(arch: str, spec: AttentionSpec, device: str) -> dict[str, int]:
    """profile_model of the registry model at batch 1 of its input size (meta: shapes only)."""
    info = networks.model_info(arch)
    size = (1, 3, info.input_size, info.input_size)
    if device == "meta":
        try:
            with torch.device("meta"):
                model = networks.create_model(arch, num_classes=info.num_classes, attention=spec.name, attention_kwargs=spec.kwargs)
            return profile_model(model, size)
        except (NotImplementedError, RuntimeError):  # an operation without a meta kernel
            pass
    model = networks.create_model(arch, num_classes=info.num_classes, attention=spec.name, attention_kwargs=spec.kwargs)
    return profile_model(model, size)


def diff(ours: float, paper: Optional[str]) -> str:
    """ours - paper at the published precision, signed; '-' without a published number."""
    if not paper:
        return "-"
    decimals = len(paper.split(".")[1]) if "." in paper else 0
    d = round(round(ours, decimals) - float(paper), decimals) + 0.0  # + 0.0: no "-0.00"
    return f"{d:+.{decimals}f}"


def table_rows(archs: list[str], specs: list[AttentionSpec], device: str, paper: Optional[Path], mac_decimals: int = 4) -> list[dict[str, str]]:
    """The table's cells as strings (plus the raw integer counts, for the csv)."""
    rows = []
    for arch in archs:
        for spec in specs:
            p = profile(arch, spec, device)
            params_m, thop_g = p["params"] / 1e6, p["macs_thop"] / 1e9
            pp, pf = published(paper, arch, spec)
            rows.append({
                "arch": arch,
                "attention": spec.token,
                "params_M": f"{params_m:.4f}",
                "paper_params_M": pp or "-",
                "d_params_M": diff(params_m, pp),
                "macs_thop_G": f"{thop_g:.{mac_decimals}f}",
                "paper_flops_G": pf or "-",
                "d_macs_G": diff(thop_g, pf) if pf else "-",
                "macs_G": f"{p['macs'] / 1e9:.{mac_decimals}f}",
                "params": str(p["params"]),
                "macs_thop": str(p["macs_thop"]),
                "macs": str(p["macs"]),
            })
    return rows


def format_text(rows: list[dict[str, str]]) -> str:
    widths = [max(len(h), *(len(r[c]) for r in rows)) for h, c in zip(HEADERS, COLUMNS)]
    left = {"arch", "attention"}
    def line(cells):
        return "  ".join(v.ljust(w) if c in left else v.rjust(w) for v, w, c in zip(cells, widths, COLUMNS)).rstrip()
    return "\n".join([line(HEADERS), line(["-" * w for w in widths])] + [line([r[c] for c in COLUMNS]) for r in rows])


def format_markdown(rows: list[dict[str, str]]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(":---" if c in ("arch", "attention") else "---:" for c in COLUMNS) + "|"]
    return "\n".join(out + ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows])


def footnote(device: str, paper: Optional[Path]) -> str:
    import thop

    source = f"{paper}/params.csv, imagenet.csv, cifar.csv" if paper else "not found (shared/paper beside the repository, or set $SIMAM_PAPER_DIR)"
    return (
        "Counted at batch 1 on each model's input size and head from networks.model_info (CIFAR 32x32/100 classes, "
        f"ImageNet 224x224/1000, AlexNet 128x128/10; {device} device). thop MACs: multiply-accumulates by thop {getattr(thop, '__version__', '?')} rules (convs, linears, BN, "
        "pooling; elementwise attention work such as SimAM counts 0, as in the published FLOPs, which an older thop also counted "
        "without BN and pooling). MACs incl. attention: plus the attention modules' own elementwise operations "
        f"(networks/profile.py). diff = ours - published, at the published precision. Published: {source}."
    )


def _parse(argv: list[str]) -> Any:
    parser = make_parser("model_table.py", __doc__)
    parser.add_argument("--dataset", required=True, choices=["imagenet", "cifar"], help="architecture family")
    parser.add_argument("--archs", help="comma-separated registry names (default: the whole family)")
    parser.add_argument("--attentions", default=None, help="comma-separated attention types, e.g. none,simam,se,se_r4 (default: all)")
    parser.add_argument("--csv", type=Path, help="also write the table to this csv file")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--device", choices=["meta", "cpu"], default="meta", help="meta: shapes only (fast, default); cpu: a real forward pass")
    args = parser.parse_args(argv)
    args.arch_list = parse_archs(args.archs, args.dataset)
    tokens = args.attentions.split(",") if args.attentions else ["none", "simam"] + [a for a in networks.list_attentions() if a not in ("none", "simam")]
    args.specs = [parse_attention(t.strip()) for t in tokens if t.strip()]
    if not args.arch_list or not args.specs:
        raise UserError("no architecture or no attention type given")
    if args.csv and not args.csv.resolve().parent.is_dir():
        raise UserError(f"--csv: folder {args.csv.resolve().parent} does not exist")
    return args


def _main(argv: list[str]) -> int:
    args = _parse(argv)
    paper = find_paper_dir()
    # CIFAR networks have tens of MMACs: more decimals so that the attention's work shows
    rows = table_rows(args.arch_list, args.specs, args.device, paper, mac_decimals=4 if args.dataset == "imagenet" else 6)
    print(format_markdown(rows) if args.markdown else format_text(rows))
    print()
    print(footnote(args.device, paper))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS + ["params", "macs_thop", "macs"])
            writer.writeheader()
            writer.writerows(rows)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
