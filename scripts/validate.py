"""Validate many checkpoints in one command, each as the network it describes, into one csv + markdown table.

    python scripts/validate.py multirun/20250101-120000                       # every checkpoint under a folder
    python scripts/validate.py 'outputs/*/checkpoints/best.pth' --out results.csv
    python scripts/validate.py runs/simam/checkpoints/best.pth --data cifar100 --data-root data/ --ema
    python scripts/validate.py resnet50_simam.pth.tar --arch resnet50 --attention simam --attention-kwargs e_lambda=0.1 \
        --data imagenet --data-root /data/imagenet                             # a checkpoint of the original SimAM code

CKPT_OR_DIR_OR_GLOB: checkpoint files, folders (every *.pth, *.pth.tar, *.pt below them) or quoted glob
patterns. This project's checkpoints carry their `model_spec` and `config`: each is rebuilt as that
network (architecture, block, attention type and options, classes) and evaluated on its own data set,
with its image size and normalisation; --data/--data-root evaluate it on another data set or folder.
Other files (the original SimAM code's, torchvision state dicts, timm's) need --arch and --attention
(and --attention-kwargs when not the defaults); their head size is read from their weights.

Each checkpoint is evaluated with engine.loops.evaluate (every sample once, top-1/top-5 in %, mean
cross-entropy). The table (checkpoint, epoch, weights, arch, attention, data, acc1, acc5, loss,
num_samples, params, error) goes to --out (csv) and beside it as markdown (.md), and to stdout. A file
that cannot be read or evaluated gets a row with its error instead of stopping the others; the exit
code is then 1 (0 when every checkpoint was evaluated, 2 for a mistake on the command line).
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from scripts.common import (
    UserError, config_num_classes, make_parser, model_from_spec, plain_simam, run_main, val_dataset,
)

SUFFIXES = (".pth", ".pth.tar", ".pt", ".ckpt")
COLUMNS = ["checkpoint", "epoch", "weights", "arch", "attention", "data", "acc1", "acc5", "loss", "num_samples", "params", "error"]
_AMP = ("none", "bf16", "fp16")
_HEAD = re.compile(r"(^|\.)(fc|linear|head|classifier(\.\d+)?)\.weight$")


# ------------------------------------------------------------------------------------------ inputs
def _is_checkpoint_name(path: Path) -> bool:
    return path.name.endswith(SUFFIXES) and not path.name.startswith(".")  # not the writer's hidden temp files


def _below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_checkpoint_name(p))


def expand_inputs(items: list[str]) -> list[tuple[Path, str]]:
    """(checkpoint path, '') for every file given, found below a folder or matched by a glob; (item, why) when
    an item yields none. Each file once, in the order given (a folder's files sorted)."""
    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item).expanduser()
        if glob.has_magic(item):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(item), recursive=True))]
            found = [f for m in matches for f in (_below(m) if m.is_dir() else [m])]
            why = "no checkpoint matches this pattern"
        elif path.is_dir():
            found, why = _below(path), f"no {', '.join('*' + s for s in SUFFIXES)} file below this folder"
        else:
            found, why = [path], ""
        if not found:
            out.append((path, why))
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                out.append((f, ""))
    return out


def parse_kwargs(text: Optional[str]) -> dict:
    """--attention-kwargs: JSON ('{"e_lambda": 0.1}') or k=v,k=v with JSON values (e_lambda=0.1,impl=\"reference\")."""
    if not text:
        return {}
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--attention-kwargs {text!r}: not valid JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise UserError(f"--attention-kwargs {text!r}: expected a JSON object")
        return value
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, raw = part.partition("=")
        if not eq or not key:
            raise UserError(f"--attention-kwargs {text!r}: expected KEY=VALUE[,KEY=VALUE], e.g. e_lambda=0.1 or reduction=16")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw.strip()
    return out


# ------------------------------------------------------------------------------------------ networks
def _head_classes(state_dict: dict) -> Optional[int]:
    """Rows of the last classifier weight (fc/linear/head/classifier.N) of a state dict, or None."""
    heads = [v for k, v in state_dict.items() if _HEAD.search(str(k)) and getattr(v, "dim", lambda: 0)() == 2]
    return int(heads[-1].shape[0]) if heads else None


def _weights(state: Any, ema: bool, path: Path) -> dict:
    """The state dict to load: the model's, or with --ema the EMA copy (ours: "ema"; timm's: "state_dict_ema")."""
    from networks.weights import extract_state_dict

    if not ema:
        return extract_state_dict(state)[0]
    for key in ("ema", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            return dict(state[key])
    raise UserError(f"{path} holds no EMA weights (trained without ema.enabled=true): leave out --ema")


def _check_flags(spec: dict, args: Any, path: Path) -> None:
    """A flag that contradicts what one of our checkpoints says it is: refused, naming both."""
    for flag, key, given in (("--arch", "arch", args.arch), ("--attention", "attention", args.attention),
                             ("--num-classes", "num_classes", args.num_classes)):
        if given is not None and str(given) != str(spec.get(key)):
            raise UserError(f"{flag} {given} but {path.name} holds {key}={spec.get(key)}: leave out {flag} (the checkpoint says what it is)")


def build_model(state: Any, args: Any, path: Path) -> tuple[Any, dict]:
    """(network with the checkpoint's weights in eval mode, the config its data set comes from)."""
    import networks
    from networks.weights import WeightsError

    ours = isinstance(state, dict) and isinstance(state.get("model_spec"), dict) and isinstance(state.get("config"), dict)
    sd = _weights(state, args.ema, path)
    if ours:
        spec, config = state["model_spec"], state["config"]
        _check_flags(spec, args, path)
        model = model_from_spec({**spec, "num_classes": config_num_classes(config, spec)}, config)
        source: Any = {"model": sd, "model_spec": spec}
    else:
        if not args.arch or not args.attention:
            raise UserError(f"{path.name} has no model_spec (not written by this project): give --arch and --attention, "
                            "e.g. --arch resnet50 --attention simam")
        num_classes = args.num_classes or _head_classes(sd)
        if not num_classes:
            raise UserError(f"{path.name}: no classifier weight found to read the number of classes from: give --num-classes")
        spec = {"arch": args.arch, "attention": args.attention, "attention_kwargs": args.attention_kwargs, "num_classes": num_classes}
        config = foreign_config(args, num_classes)
        model, source = model_from_spec(spec), sd
    try:
        networks.load_weights(model, source)
    except WeightsError as e:
        raise UserError(str(e).splitlines()[0]) from None
    return model.eval(), config


def foreign_config(args: Any, num_classes: int) -> dict:
    """The data section a foreign checkpoint is evaluated with: --data, its architecture's image size and normalisation."""
    import networks

    if not args.data:
        raise UserError("a checkpoint not written by this project needs --data NAME (and --data-root)")
    info = networks.model_info(args.arch)
    augment = args.augment or ("cifar" if info.family == "cifar" else "imagenet")
    return {"data": {"name": args.data, "root": args.data_root, "augment": augment,
                     "image_size": args.image_size or info.input_size, "num_classes": num_classes}, "seed": 0}


# ------------------------------------------------------------------------------------------ evaluation
_DATA_CACHE: dict[str, Any] = {}


def _dataset(config: dict, args: Any, num_classes: int) -> tuple[Any, str]:
    """(validation set, its name) of a checkpoint's config, with --data/--data-root/--image-size applied; cached."""
    d = dict(config.get("data") or {})
    if args.image_size:
        d["image_size"] = args.image_size
    config = {**config, "data": d}
    name = args.data or d.get("name")
    key = json.dumps([d, config.get("seed"), name, args.data_root, num_classes], sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = val_dataset(config, name=name, root=args.data_root, num_classes=num_classes)
    return _DATA_CACHE[key], str(name)


def validate_checkpoint(path: Path, args: Any) -> dict:
    """One row of the table: the checkpoint evaluated, or its error in one line."""
    import torch

    from engine.data import build_loader
    from engine.loops import evaluate
    from networks.weights import WeightsError, read_checkpoint

    row: dict[str, Any] = {"checkpoint": str(path), "weights": "ema" if args.ema else "model"}
    try:
        state = read_checkpoint(path, trust=args.trust_checkpoint)
        model, config = build_model(state, args, path)
        spec = model.model_spec
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(spec["attention_kwargs"].items()))
        row.update(epoch=state.get("epoch") if isinstance(state, dict) else None, arch=spec["arch"],
                   attention=spec["attention"] + (f" ({opts})" if opts else ""), params=sum(p.numel() for p in model.parameters()))
        val, row["data"] = _dataset(config, args, int(spec["num_classes"]))
        loader = build_loader(val, batch_size=args.batch_size, train=False, workers=args.workers)
        device = torch.device(args.device)
        model.to(device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        with torch.inference_mode():
            result = evaluate(model, loader, torch.nn.CrossEntropyLoss(), device=device, amp_dtype=amp, channels_last=args.channels_last)
        row.update({k: result[k] for k in ("acc1", "acc5", "loss", "num_samples")})
    except (UserError, WeightsError) as e:
        row["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    except Exception as e:  # noqa: BLE001 - one bad file gets a row with its error; the others are still evaluated
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


# ------------------------------------------------------------------------------------------ output
def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None or v == "":
        return "-" if key != "error" else ""
    if key in ("acc1", "acc5"):
        return f"{v:.3f}"
    if key == "loss":
        return f"{v:.4f}"
    return str(v).replace("|", "/")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if c in ("acc1", "acc5", "loss", "num_samples", "params") else "---"
                                                              for c in COLUMNS) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_cell(r, c) for c in COLUMNS) + " |" for r in rows])


def write_table(rows: list[dict], out: Path) -> Path:
    """The rows as csv at `out` and as markdown beside it (`out` with .md); returns the markdown path."""
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: ("" if r.get(c) is None else r[c]) for c in COLUMNS})
    md = out.with_suffix(".md")
    md.write_text(markdown_table(rows) + "\n")
    return md


# ------------------------------------------------------------------------------------------ main
def _parse(argv: list[str]) -> Any:
    import torch

    parser = make_parser("validate.py", __doc__)
    parser.add_argument("inputs", nargs="+", metavar="CKPT_OR_DIR_OR_GLOB", help="checkpoints, folders of them, or glob patterns")
    parser.add_argument("--data", help="data set name (cifar10, cifar100, imagenet, imagefolder, digits, fake; default: each checkpoint's)")
    parser.add_argument("--data-root", help="data folder (default: each checkpoint's data.root)")
    parser.add_argument("--arch", help="architecture of checkpoints without a model_spec (e.g. resnet50)")
    parser.add_argument("--attention", help="attention type of checkpoints without a model_spec (none, simam, se, ...)")
    parser.add_argument("--attention-kwargs", help="their attention options: e_lambda=0.1 or reduction=16, or a JSON object")
    parser.add_argument("--num-classes", type=int, help="their head size (default: read from the classifier's weight)")
    parser.add_argument("--image-size", type=int, help="input size (default: the checkpoint's data.image_size, else the arch's)")
    parser.add_argument("--augment", help="normalisation recipe of foreign checkpoints (default: cifar or imagenet by the arch)")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in each checkpoint")
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    parser.add_argument("--workers", type=int, default=min(4, max((os.cpu_count() or 1) - 1, 0)), help="loader processes")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=_AMP, default="none", help="autocast dtype (default: none, float32)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints with pickled Python objects (only if you trust them)")
    parser.add_argument("--out", type=Path, default=Path("validate.csv"), help="csv file (default: validate.csv; markdown beside it)")
    args = parser.parse_args(argv)
    args.attention_kwargs = parse_kwargs(args.attention_kwargs)
    _check(args, torch.cuda.is_available())
    return args


def _check(args: Any, cuda: bool) -> None:
    if args.batch_size < 1 or args.workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0 (got {args.batch_size}, {args.workers})")
    if args.image_size is not None and args.image_size < 1:
        raise UserError(f"--image-size must be >= 1, got {args.image_size}")
    if args.device == "cuda" and not cuda:
        raise UserError("--device cuda but no CUDA GPU is visible: use --device cpu")
    if args.amp == "fp16" and args.device == "cpu":
        raise UserError("--amp fp16 needs --device cuda (use bf16 on the CPU)")
    if args.arch:
        import networks

        try:
            networks.model_info(args.arch)
            networks.attention.get_attn_layer(args.attention or "none", **args.attention_kwargs)
        except ValueError as e:
            raise UserError(str(e).splitlines()[0]) from None
    if not args.out.resolve().parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.resolve().parent} does not exist")
    if args.out.suffix == ".md":
        raise UserError(f"--out {args.out}: give the csv file's name (the markdown table is written beside it as .md)")


def _main(argv: list[str]) -> int:
    args = _parse(argv)
    inputs = expand_inputs(args.inputs)
    rows = []
    for path, why in inputs:
        row = {"checkpoint": str(path), "error": why} if why else validate_checkpoint(path, args)
        rows.append(row)
        status = row.get("error") or f"acc1 {row['acc1']:.3f} acc5 {row['acc5']:.3f} ({row['num_samples']} images)"
        print(f"{path}: {status}", file=sys.stderr, flush=True)
    md = write_table(rows, args.out)
    print(markdown_table(rows))
    failed = sum(1 for r in rows if r.get("error"))
    print(f"wrote {args.out} and {md}: {len(rows) - failed} of {len(rows)} checkpoints evaluated", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    with plain_simam():  # the plain SimAM formula: no torch.compile start-up for a few batches
        return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
