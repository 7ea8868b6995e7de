"""Side-by-side report of training runs: mean +- std over seeds beside the SimAM paper's numbers, with plots.

    python scripts/report.py multirun/20250101-120000
    python scripts/report.py multirun/ outputs/cifar100 --out reports/cifar100
    python scripts/report.py multirun/STAMP --dataset-alias fake=cifar100 --paper ../shared/paper

RUN_DIRS are run directories or folders that contain them (searched recursively for metrics.jsonl,
status.json and .hydra/config.yaml). Writes into --out (default: the folder given, or the parent of a single run):
  report.md    one row per (dataset, arch, block, attention, attention options, recipe): best and final val
               top-1/top-5 as mean +- std over seeds (n), the published top-1/top-5 and ours - published,
               params and thop MACs beside the published params/FLOPs, median training images/s, the
               recipe and the command; runs in progress, interrupted, stopped or failed (status.json,
               else the logs) are listed apart and not averaged; unreadable lines and runs are skipped
               with a warning naming the file
  report.csv   the same rows, one value per column
  curves_*.png training/validation loss and accuracy per group (each seed, and the mean)
  compare_*.png the attention types of one (dataset, arch) side by side (mean +- std bands)
  predictions_*.png 18 validation images with predicted and true labels, by the best checkpoint of a group
"""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from scripts.common import (
    Published, UserError, checkpoint_meta, class_names, config_num_classes, default_paper_dir, group_items,
    load_checkpoint_model, lookup_published, lookup_published_params, make_parser, mean_std, model_from_config,
    plain_simam, read_published, read_published_params, run_main, unnormalise, val_dataset,
)
from scripts.runs import Run, find_run_dirs, load_run, recipe_text, schedule_text

GRID_IMAGES = 18  # as the AlexNet notebook
CSV_COLUMNS = [
    "dataset", "arch", "block", "attention", "attention_params", "n", "seeds",
    "best_top1_mean", "best_top1_std", "best_top5_mean", "best_top5_std",
    "final_top1_mean", "final_top1_std", "final_top5_mean", "final_top5_std",
    "published_top1", "published_top5", "diff_top1", "diff_top5", "published_source",
    "params_M", "published_params_M", "macs_thop_G", "published_flops_G", "macs_G", "train_images_per_s",
    "optimizer", "lr", "weight_decay", "schedule", "epochs", "batch_size", "recipe", "devices", "torch", "command", "run_dirs",
]


# ------------------------------------------------------------------------------------------ groups
@dataclass
class Group:
    """Complete runs that differ only in their seed."""

    runs: list[Run]
    dataset: str
    arch: str
    block: str
    attention: str
    attention_params: str
    recipe: str
    slug: str = ""
    row: dict = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        opts = f" ({self.attention_params})" if self.attention_params else ""
        return f"{self.dataset} {self.arch}{'-' + self.block if self.block else ''} + {self.attention}{opts}"

    @property
    def attention_kwargs(self) -> dict:
        att = dict(self.runs[0].config.get("attention") or {})
        att.pop("name", None)
        return att


def _attention(config: dict) -> tuple[str, str]:
    att = dict(config.get("attention") or {})
    name = str(att.pop("name", "none"))
    return name, ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(att.items()))


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_key(run: Run) -> tuple:
    """What must be equal for runs to be averaged: everything but the seed that changes the result."""
    c = run.config
    data, model = c.get("data") or {}, c.get("model") or {}
    name, params = _attention(c)
    data_sig = (data.get("name"), data.get("image_size"), data.get("augment"), data.get("num_classes"),
                data.get("num_train") if data.get("name") == "fake" else None, data.get("num_val") if data.get("name") == "fake" else None)
    return (str(data.get("name")), str(model.get("arch")), str(model.get("block") or ""), json.dumps(model.get("kwargs") or {}, sort_keys=True),
            name, params, recipe_text(c), json.dumps(data_sig))


def make_groups(runs: list[Run]) -> list[Group]:
    groups = []
    for key, members in group_items(runs, group_key).items():
        dataset, arch, block, _, attention, params, recipe, _ = key
        groups.append(Group(sorted(members, key=lambda r: str(r.seed)), dataset, arch, block, attention, params, recipe))
    groups.sort(key=lambda g: (g.dataset, g.arch, g.block, g.attention != "none", g.attention, g.attention_params, g.recipe))
    used: set[str] = set()
    for g in groups:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{g.dataset}_{g.arch}{'_' + g.block if g.block else ''}_{g.attention}"
                      + (f"_{g.attention_params}" if g.attention_params else "")).strip("_")
        slug, i = base, 2
        while slug in used:
            slug, i = f"{base}_{i}", i + 1
        used.add(slug)
        g.slug = slug
    return groups


# ------------------------------------------------------------------------------------------ rows
_PROFILE_CACHE: dict[str, dict] = {}


def profile(run: Run) -> Optional[dict]:
    """networks.profile.profile_model of the run's model at batch 1 (meta device when it can), cached per model."""
    import torch

    from networks.profile import profile_model

    c = run.config
    spec = checkpoint_meta(run.path / "checkpoints" / "last.pth").get("model_spec")
    try:
        num_classes = config_num_classes(c, spec)
        size = int((c.get("data") or {}).get("image_size") or 224)
    except (KeyError, ValueError, TypeError):
        return None
    key = json.dumps([c.get("model"), c.get("attention"), num_classes, size], sort_keys=True, default=str)
    if key not in _PROFILE_CACHE:
        try:
            try:
                with torch.device("meta"):
                    model = model_from_config(c, num_classes)
                _PROFILE_CACHE[key] = profile_model(model, (1, 3, size, size))
            except (NotImplementedError, RuntimeError):  # an operation without a meta kernel: count on the CPU
                _PROFILE_CACHE[key] = profile_model(model_from_config(c, num_classes), (1, 3, size, size))
        except UserError:
            return None
    return _PROFILE_CACHE[key]


def _command(runs: list[Run]) -> str:
    """`python main_x.py -m <overrides>` with the per-run values (seeds) joined by commas."""
    script = f"{runs[0].job_name or 'main_cifar'}.py"
    keys: list[str] = []
    values: dict[str, list[str]] = {}
    for r in runs:
        for o in r.overrides:
            k, _, v = o.partition("=")
            if k not in values:
                keys.append(k)
                values[k] = []
            if v not in values[k]:
                values[k].append(v)
    parts = [f"{k}={','.join(values[k])}" for k in keys]
    multi = len(runs) > 1
    return f"python {script}{' -m' if multi else ''} " + " ".join(parts)


def _fmt(mean: float, std: float, decimals: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if not math.isnan(std) else "")


def _csv_num(v: Optional[float], decimals: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{decimals}f}".rstrip("0").rstrip(".")


def _accuracies(g: Group) -> dict:
    """best/final top-1/top-5 mean and std over the group's runs."""
    out = {}
    for which, records in (("best", [r.best() for r in g.runs]), ("final", [r.final() for r in g.runs])):
        for k in (1, 5):
            values = [rec[f"val_acc{k}"] for rec in records if rec and isinstance(rec.get(f"val_acc{k}"), (int, float))]
            out[f"{which}_top{k}_mean"], out[f"{which}_top{k}_std"] = mean_std(values)
    return out


def _diff(ours: float, published: Optional[float]) -> Optional[float]:
    return ours - published if published is not None and not math.isnan(ours) else None


def _param_note(pub: Published, g: Group) -> str:
    """A note when the published attention parameter differs from the group's."""
    if not (pub.attention_param and g.attention_params and pub.attention_param not in g.attention_params):
        return ""
    try:
        ours = float(g.attention_params.split("=", 1)[1].split(",")[0])
        return "" if math.isclose(ours, float(pub.attention_param)) else f"published with attention param {pub.attention_param}"
    except (ValueError, IndexError):
        return ""


_PAPER_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
_PAPER_SIZES = {"cifar10": 32, "cifar100": 32, "imagenet": 224}  # AlexNet's 128 px: no published FLOPs


def _published_cells(g: Group, acc: dict, published: dict, params_table: dict, lookup_ds: str) -> dict:
    """Published accuracies, params and FLOPs of the group's network, and ours minus them; params only for the
    published head size, FLOPs only at the published image size (else they would be another network's)."""
    block = g.block or None
    pub: Optional[Published] = lookup_published(published, lookup_ds, g.arch, g.attention, block)
    params = lookup_published_params(params_table, lookup_ds, g.arch, g.attention, g.attention_kwargs, block)
    params = params or (pub.params_M if pub else None)
    config = g.runs[0].config
    try:
        same_head = config_num_classes(config) == _PAPER_CLASSES.get(lookup_ds)
    except (KeyError, ValueError, TypeError):
        same_head = False
    size = (config.get("data") or {}).get("image_size")
    note = "; ".join(filter(None, [_param_note(pub, g) if pub else "",
                                   f"FLOPs published at {_PAPER_SIZES.get(lookup_ds)} px, this run uses {size}"
                                   if pub and pub.flops_G and size != _PAPER_SIZES.get(lookup_ds) else ""]))
    return {
        "published_top1": pub.top1 if pub else None, "published_top5": pub.top5 if pub else None,
        "diff_top1": _diff(acc["best_top1_mean"], pub.top1 if pub else None),
        "diff_top5": _diff(acc["best_top5_mean"], pub.top5 if pub else None),
        "published_source": (f"{pub.file}: {pub.source}" + (f" ({note})" if note else "")) if pub else "",
        "published_params_M": params if same_head else None,
        "published_flops_G": pub.flops_G if pub and size == _PAPER_SIZES.get(lookup_ds) else None,
    }


def compute_row(g: Group, published: dict, aliases: dict[str, str], params_table: Optional[dict] = None) -> dict:
    """The report's row of a group: accuracies, published numbers beside them, model size, recipe."""
    acc = _accuracies(g)
    lookup_ds = aliases.get(g.dataset, g.dataset)
    speeds = [m["throughput"] for r in g.runs for m in r.metrics if isinstance(m.get("throughput"), (int, float))]
    prof = profile(g.runs[0])
    c = g.runs[0].config
    o, t, d = (c.get(k) or {} for k in ("optim", "trainer", "data"))
    metas = [checkpoint_meta(r.path / "checkpoints" / "last.pth") for r in g.runs]
    torch_versions = sorted({str(m["torch_version"]) for m in metas if m.get("torch_version")})
    return {
        "dataset": g.dataset + (f" (as {lookup_ds})" if lookup_ds != g.dataset else ""),
        "arch": g.arch, "block": g.block, "attention": g.attention, "attention_params": g.attention_params,
        "n": len(g.runs), "seeds": ",".join(str(r.seed) for r in g.runs), **acc,
        **_published_cells(g, acc, published, params_table or {}, lookup_ds),
        "params_M": prof["params"] / 1e6 if prof else None, "macs_G": prof["macs"] / 1e9 if prof else None,
        "macs_thop_G": prof["macs_thop"] / 1e9 if prof else None,
        "train_images_per_s": statistics.median(speeds) if speeds else None,
        "optimizer": o.get("name"), "lr": o.get("lr"), "weight_decay": o.get("weight_decay"),
        "schedule": schedule_text(c), "epochs": t.get("epochs"), "batch_size": d.get("batch_size"),
        "recipe": g.recipe, "devices": f"{t.get('devices', 1)} x {t.get('accelerator', 'auto')}",
        "torch": ",".join(torch_versions), "command": _command(g.runs), "run_dirs": ";".join(str(r.path) for r in g.runs),
    }


# ------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


_PANELS = [("train_loss", "train loss"), ("val_loss", "val loss"), ("train_acc1", "train top-1 (%)"), ("val_acc1", "val top-1 (%)")]


def _marker(epochs: list[int]) -> Optional[str]:
    return "o" if len(epochs) <= 20 else None


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    pts = [(m["epoch"], m[key]) for m in run.metrics if isinstance(m.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _band(runs: list[Run], key: str) -> tuple[list[int], list[float], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for e, v in zip(*_series(r, key)):
            by_epoch.setdefault(e, []).append(v)
    epochs = sorted(by_epoch)
    stats = [mean_std(by_epoch[e]) for e in epochs]
    return epochs, [m for m, _ in stats], [0.0 if math.isnan(s) else s for _, s in stats]


def plot_group_curves(g: Group, out: Path) -> str:
    """Each run's curves (thin) and their mean (thick), four panels."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, _PANELS):
        for r in g.runs:
            epochs, values = _series(r, key)
            ax.plot(epochs, values, lw=0.8, alpha=0.6, marker=_marker(epochs), ms=3, label=f"seed {r.seed}")
        if len(g.runs) > 1:
            epochs, mean, _ = _band(g.runs, key)
            ax.plot(epochs, mean, lw=2, color="black", marker=_marker(epochs), ms=4, label="mean")
        ax.set_title(title)
        _epoch_axis(ax)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{g.label}: {g.recipe}", fontsize=9)
    name = f"curves_{g.slug}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def plot_comparison(groups: list[Group], out: Path, slug: str) -> str:
    """Mean +- std bands over seeds of several groups (the attention types of one dataset/arch)."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, _PANELS):
        for g in groups:
            epochs, mean, std = _band(g.runs, key)
            label = f"{g.attention}{' (' + g.attention_params + ')' if g.attention_params else ''} n={len(g.runs)}"
            line, = ax.plot(epochs, mean, lw=1.5, marker=_marker(epochs), ms=4, label=label)
            low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
            if len(epochs) > 1:
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
            else:  # one epoch: a band has no width, draw the std as an error bar
                ax.errorbar(epochs, mean, yerr=std, color=line.get_color(), capsize=4)
        ax.set_title(title)
        _epoch_axis(ax)
    axes.flat[3].legend(fontsize=7)
    fig.suptitle(f"{groups[0].dataset} {groups[0].arch}: mean ± std over seeds", fontsize=10)
    name = f"compare_{slug}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def plot_predictions(g: Group, out: Path) -> str:
    """A grid of validation images with the predicted and true labels, by the best checkpoint of the group."""
    import numpy as np
    import torch

    best_run = max(g.runs, key=lambda r: (r.best() or {}).get("val_acc1", -1))
    ckpt = best_run.path / "checkpoints" / "best.pth"
    if not ckpt.is_file():
        ckpt = best_run.path / "checkpoints" / "last.pth"
    model, config, _ = load_checkpoint_model(ckpt)
    val = val_dataset(config)
    n = min(GRID_IMAGES, len(val))
    indices = sorted({int(round(i)) for i in np.linspace(0, len(val) - 1, n)})
    samples = [val[i] for i in indices]
    images = torch.stack([s[0] for s in samples])
    with torch.inference_mode():
        pred = model(images).argmax(1).tolist()
    names = class_names(val) or [str(i) for i in range(max(pred + [s[1] for s in samples]) + 1)]
    augment = (config.get("data") or {}).get("augment", "none")
    plt = _plt()
    cols = 6
    rows = math.ceil(len(samples) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.3 * rows), constrained_layout=True)
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, (image, label), p in zip(np.atleast_1d(axes).flat, samples, pred):
        ax.imshow(unnormalise(image, augment))
        ax.set_title(f"pred: {names[p]}\ntrue: {names[label]}", fontsize=8, color="green" if p == label else "red")
    info = getattr(model, "checkpoint_info", {})
    fig.suptitle(f"{g.label}: {ckpt.relative_to(best_run.path.parent)} (epoch {info.get('epoch')}, "
                 f"val top-1 {(best_run.best() or {}).get('val_acc1', float('nan')):.2f})", fontsize=9)
    name = f"predictions_{g.slug}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


# ------------------------------------------------------------------------------------------ output
_MD_COLUMNS = [
    ("dataset", "dataset"), ("arch", "arch"), ("attention", "attention"), ("n", "n"), ("best top-1", "best_top1"),
    ("best top-5", "best_top5"), ("final top-1", "final_top1"), ("final top-5", "final_top5"),
    ("published top-1", "published_top1"), ("Δ top-1", "diff_top1"), ("published top-5", "published_top5"), ("Δ top-5", "diff_top5"),
    ("params (M)", "params_M"), ("published params (M)", "published_params_M"), ("thop MACs (G)", "macs_thop_G"),
    ("published FLOPs (G)", "published_flops_G"), ("MACs incl. attention (G)", "macs_G"), ("train img/s", "train_images_per_s"),
    ("recipe", "recipe"),
]


def _md_cell(row: dict, key: str) -> str:
    if key in ("best_top1", "best_top5", "final_top1", "final_top5"):
        return _fmt(row[f"{key}_mean"], row[f"{key}_std"])
    v = row.get(key)
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if key == "attention":
        return f"{v} ({row['attention_params']})" if row["attention_params"] else str(v)
    if key == "arch" and row.get("block"):
        return f"{v} ({row['block']})"
    if key.startswith("diff_"):
        return f"{v:+.2f}"
    if key in ("published_top1", "published_top5"):
        return f"{v:.2f}"
    if key in ("published_params_M", "published_flops_G"):
        return str(v)  # as published
    if key == "params_M":
        return f"{v:.4f}"  # params.csv's precision
    if key in ("macs_thop_G", "macs_G"):
        return f"{v:.4f}" if v < 1 else f"{v:.3f}"
    if key == "train_images_per_s":
        return f"{v:.0f}"
    return str(v).replace("|", "/")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def _legend(paper_dir: Optional[Path]) -> list[str]:
    return [
        "Top-1/top-5: validation accuracy (%), mean ± sample std over the n seeds of a group (no ± for one run). "
        "*best*: the epoch with the highest top-1 of each run (its top-5 from that same epoch), as the paper reports; "
        "*final*: the last epoch. *Δ*: best mean minus the published number "
        f"({'from ' + str(paper_dir) if paper_dir else 'no paper folder found'}; '-': none published for this "
        "(dataset, arch and block, attention)). Params and MACs: networks.profile.profile_model at batch 1 and the run's image "
        "size; *thop MACs* are multiply-accumulates by thop's rules, the quantity the paper published as FLOPs (with an older "
        "thop that did not count BN and pooling); *MACs incl. attention* add the attention modules' elementwise work, which "
        "thop counts as zero. Published params come from params.csv for that block and SE/CBAM reduction (CIFAR: 100-class "
        "heads). train img/s: median over epochs and runs of the training throughput. Runs are grouped when everything "
        "but the seed is equal (data, model, attention options, recipe).", "",
    ]


def _group_lines(groups: list[Group]) -> list[str]:
    lines: list[str] = []
    for g in groups:
        r = g.row
        lines += [f"- **{g.label}** — n={r['n']} (seeds {r['seeds']}), {r['devices']}, torch {r['torch'] or '?'}",
                  f"  - command: `{r['command']}`"]
        if r["published_source"]:
            lines.append(f"  - published: {r['published_top1']:.2f} top-1" + (f" / {r['published_top5']:.2f} top-5" if r["published_top5"] else "")
                         + f" ({r['published_source']})")
        lines.append("  - runs: " + ", ".join(f"`{Path(p).name}`" for p in r["run_dirs"].split(";")))
    return lines or ["None."]


def _other_lines(others: list[Run]) -> list[str]:
    rows = []
    for run in others:
        last = run.final()
        rows.append([f"`{run.path}`", run.status, f"{run.epochs_done}/{run.epochs or '?'}",
                     f"{last['val_acc1']:.2f}" if last and isinstance(last.get("val_acc1"), (int, float)) else "-",
                     run.note.replace("|", "/") or "-"])
    return _table(["run dir", "status", "epochs", "last val top-1", "note"], rows) if rows else ["None."]


def write_markdown(path: Path, groups: list[Group], others: list[Run], pictures: list[tuple[str, str]], argv: Sequence[str],
                   paper_dir: Optional[Path], skipped_pictures: list[str], warnings: Sequence[str] = ()) -> None:
    import torch

    lines = [
        "# Training report", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python scripts/report.py {' '.join(argv)}` (torch {torch.__version__}). "
        f"{sum(len(g.runs) for g in groups)} complete runs in {len(groups)} groups; {len(others)} other runs listed at the end.", "",
        "## Results", "",
    ]
    if groups:
        lines += _table([h for h, _ in _MD_COLUMNS], [[_md_cell(g.row, k) for _, k in _MD_COLUMNS] for g in groups])
    else:
        lines.append("No complete runs yet.")
    lines += ["", *_legend(paper_dir), "## Groups", "", *_group_lines(groups), "", "## Pictures", ""]
    for name, what in pictures:
        lines += [f"- `{name}`: {what}", "", f"![{what}]({name})", ""]
    if not pictures:
        lines.append("None.")
    lines += [f"- not drawn: {s}" for s in skipped_pictures]
    lines += ["", "## Runs not averaged (in progress, interrupted, stopped, failed)", "", *_other_lines(others)]
    if warnings:
        lines += ["", "## Skipped (unreadable)", "", *[f"- {w.replace('|', '/')}" for w in warnings]]
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, groups: list[Group]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for g in groups:
            w.writerow({k: (_csv_num(v) if isinstance(v, float) else ("" if v is None else v)) for k, v in g.row.items() if k in CSV_COLUMNS})


# ------------------------------------------------------------------------------------------ main
def _aliases(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        ours, eq, theirs = item.partition("=")
        if not eq or not ours or not theirs:
            raise UserError(f"--dataset-alias {item!r}: expected OURS=PAPER, e.g. fake=cifar100")
        out[ours] = theirs
    return out


def load_runs(run_dirs: Sequence[Path]) -> tuple[list[Run], list[str]]:
    """(the runs that could be read, warnings): a run that cannot be read is skipped, never the whole report."""
    runs: list[Run] = []
    warnings: list[str] = []
    for d in run_dirs:
        try:
            run = load_run(d)
        except UserError as e:
            warnings.append(f"{d}: run skipped: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - one run's surprise must not stop the report of the others
            warnings.append(f"{d}: run skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        runs.append(run)
        warnings += run.warnings
    return runs, warnings


def _rows(groups: list[Group], paper_dir: Optional[Path], aliases: dict[str, str], warnings: list[str]) -> list[Group]:
    """compute_row of every group; a group whose row cannot be computed is left out with a warning."""
    published = read_published(paper_dir) if paper_dir else {}
    params_table = read_published_params(paper_dir) if paper_dir else {}
    kept = []
    for g in groups:
        try:
            g.row = compute_row(g, published, aliases, params_table)
            kept.append(g)
        except Exception as e:  # noqa: BLE001 - e.g. a config with values of the wrong type
            warnings.append(f"{g.runs[0].path}: group {g.label} skipped: {type(e).__name__}: {e}")
    return kept


def _pictures(groups: list[Group], out: Path, predictions: bool) -> tuple[list[tuple[str, str]], list[str]]:
    pictures: list[tuple[str, str]] = []
    skipped: list[str] = []
    for g in groups:
        pictures.append((plot_group_curves(g, out), f"loss and top-1 per epoch of {g.label} (each seed, and the mean)"))
    for (dataset, arch), members in group_items(groups, lambda g: (g.dataset, g.arch)).items():
        if len(members) > 1:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}_{arch}")
            pictures.append((plot_comparison(members, out, slug), f"{dataset} {arch}: the groups side by side, mean ± std over seeds"))
    for g in groups if predictions else []:
        try:
            pictures.append((plot_predictions(g, out), f"{GRID_IMAGES} validation images, predicted vs true label, best checkpoint of {g.label}"))
        except (UserError, OSError, RuntimeError, ValueError) as e:
            skipped.append(f"predictions of {g.label}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return pictures, skipped


def _parse(argv: list[str]) -> Any:
    parser = make_parser("report.py", __doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIRS", help="run directories or folders that contain them")
    parser.add_argument("--out", type=Path, help="output folder (default: the folder given, or the parent of a single run)")
    parser.add_argument("--paper", type=Path, help="folder of the published csv files (default: $SIMAM_PAPER_DIR or <repo>/../shared/paper)")
    parser.add_argument("--dataset-alias", action="append", default=[], metavar="OURS=PAPER",
                        help="look up the published numbers of dataset OURS under PAPER's name (e.g. fake=cifar100); repeatable")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--no-predictions", action="store_true", help="no grids of validation images (they need the data set)")
    args = parser.parse_args(argv)
    args.aliases = _aliases(args.dataset_alias)
    if args.paper is not None and not args.paper.is_dir():
        raise UserError(f"--paper {args.paper}: no such folder")
    return args


def _main(argv: list[str]) -> int:
    args = _parse(argv)
    paper_dir = args.paper or default_paper_dir()
    if not paper_dir.is_dir():
        print(f"warning: no paper folder at {paper_dir} (set --paper or SIMAM_PAPER_DIR): no published numbers", file=sys.stderr)
        paper_dir = None
    run_dirs = find_run_dirs(args.run_dirs)
    if not run_dirs:
        raise UserError(f"no run directories (metrics.jsonl, status.json or .hydra/config.yaml) under {' '.join(args.run_dirs)}")
    first = Path(args.run_dirs[0]).resolve()
    out = args.out or (first.parent if first in run_dirs else first)
    out.mkdir(parents=True, exist_ok=True)

    runs, warnings = load_runs(run_dirs)
    groups = _rows(make_groups([r for r in runs if r.status == "complete"]), paper_dir, args.aliases, warnings)
    others = [r for r in runs if r.status != "complete"]
    pictures, skipped = _pictures(groups, out, not args.no_predictions) if groups and not args.no_plots else ([], [])
    write_markdown(out / "report.md", groups, others, pictures, argv, paper_dir, skipped, warnings)
    write_csv(out / "report.csv", groups)

    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for g in groups:
        r = g.row
        pub = f"published {r['published_top1']:.2f} ({r['diff_top1']:+.2f})" if r["published_top1"] is not None else "no published number"
        print(f"{g.label}: best top-1 {_fmt(r['best_top1_mean'], r['best_top1_std'])} (n={r['n']}), {pub}")
    for run in others:
        print(f"{run.status}: {run.path} ({run.note})")
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'} and {len(pictures)} pictures")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    with plain_simam():
        return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
