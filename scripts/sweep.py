"""Run the jobs of a Hydra sweep as concurrent processes: one per GPU (or group of GPUs) of a node, or N on the CPU.

    python scripts/sweep.py --gpus 0,1,2,3 main_cifar.py experiment=paper/cifar100_resnet20 attention=none,se,cbam,eca,srm,gc,simam seed=1,2,3,4,5
    python scripts/sweep.py --gpus 0-7 --gpus-per-job 4 main_imagenet.py experiment=paper/imagenet_resnet50 attention=none,simam data.root=/data/imagenet
    python scripts/sweep.py --jobs 2 main_cifar.py data=fake attention=none,simam seed=1,2        # CPU: 2 at a time
    python scripts/sweep.py --gpus 0,1 --dry-run main_cifar.py experiment=paper/cifar10_resnet56 attention=none,simam seed=1,2,3

The overrides are expanded as `python main_cifar.py -m ...` would (Hydra's own parser: `a=x,y`,
`seed=range(1,6)`; the cartesian product), and every job runs as `python SCRIPT OVERRIDES
hydra.run.dir=DIR` with DIR = hydra.sweep.dir/hydra.sweep.subdir, so the run directories are
those of a multirun and `scripts/report.py SWEEP_DIR` reads them. A job gets its own
CUDA_VISIBLE_DEVICES (`--gpus-per-job` ids; trainer.devices is set to match unless given) and
writes its console output to DIR/console.log; SWEEP_DIR/sweep.jsonl records every job (command,
devices, start, end, exit code). A run directory that already holds a complete run is skipped,
so the same command with `hydra.sweep.dir=OLD_DIR trainer.auto_resume=true` finishes a sweep
that was interrupted. Ctrl-C passes SIGINT to the jobs: they save last.pth and stop.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scripts.common import UserError, make_parser, run_main
from scripts.runs import load_run

_CONFIGS = {"main_cifar.py": "cifar", "main_imagenet.py": "imagenet"}


@dataclass
class Job:
    index: int
    overrides: list[str]
    run_dir: Path
    proc: Optional[subprocess.Popen] = None
    slot: Optional[list[str]] = None
    start: float = 0.0
    end: float = 0.0
    returncode: Optional[int] = None


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a sweep: the cartesian product of every sweep override's values (Hydra's parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(f"invalid override: {str(e).splitlines()[0]}") from None
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            try:
                choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # noqa: BLE001 - glob() sweeps need the config group's options
                raise UserError(f"{o.input_line}: only list and range sweeps (a=x,y / range(1,6)) are supported here") from None
        else:
            choices.append([o.input_line])
    return [list(c) for c in itertools.product(*choices)]


def run_dir_of(config_name: str, overrides: list[str], job_num: int) -> tuple[Path, Path]:
    """(hydra.sweep.dir, hydra.sweep.dir/hydra.sweep.subdir) of one job, composed from the real configs (validates the overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf, open_dict

    from engine.cli import CONFIG_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as e:
        options = f"; valid: {', '.join(sorted(e.options))}" if getattr(e, "options", None) else ""
        raise UserError(f"job {' '.join(overrides)}: {str(e).splitlines()[0]}{options}") from None
    except Exception as e:  # noqa: BLE001 - Hydra's other composition errors
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        raise UserError(f"job {' '.join(overrides)}: {'; '.join(lines[:2]) or type(e).__name__}") from None
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.job.num = job_num
    sweep_dir = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir")))
    return sweep_dir, sweep_dir / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))


def parse_gpus(text: str) -> list[str]:
    """'0,1,2,3' or '0-3' -> ['0', '1', '2', '3']."""
    ids: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, _, b = part.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise UserError(f"--gpus {text!r}: expected ids such as 0,1,2,3 or 0-3")
            ids += [str(i) for i in range(int(a), int(b) + 1)]
        elif part.isdigit():
            ids.append(part)
        elif part:
            raise UserError(f"--gpus {text!r}: expected ids such as 0,1,2,3 or 0-3")
    return ids


def _is_complete(run_dir: Path) -> bool:
    if not (run_dir / "metrics.jsonl").is_file():
        return False
    try:
        return load_run(run_dir).status == "complete"
    except UserError:
        return False


def _quote(path: Path) -> str:
    return f"'{path}'" if "'" not in str(path) else str(path)


def _parse(argv: list[str]) -> tuple[Any, list[list[str]]]:
    """(arguments, device slots: one list of GPU ids per concurrent job, or [] per CPU job)."""
    parser = make_parser("sweep.py", __doc__)
    parser.add_argument("--gpus", help="GPU ids to use, e.g. 0,1,2,3 or 0-7; one job per --gpus-per-job of them at a time")
    parser.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (sets trainer.devices; default 1)")
    parser.add_argument("--jobs", type=int, help="without --gpus: this many jobs at a time (CPU; each gets cores/jobs threads)")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their devices, run nothing")
    parser.add_argument("script", help="main_cifar.py or main_imagenet.py")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides; a=x,y sweeps")
    args = parser.parse_args(argv)
    args.script = Path(args.script)
    if args.script.name not in _CONFIGS:
        raise UserError(f"unknown script {str(args.script)!r}; valid: {', '.join(_CONFIGS)}")
    bad = [o for o in args.overrides if o.startswith("-")]
    if bad:
        raise UserError(f"{bad[0]}: sweep.py takes Hydra overrides (key=value) only, not flags")
    if not args.gpus:
        if args.jobs is None or args.jobs < 1:
            raise UserError("give --gpus IDS (one job per GPU) or --jobs N (N jobs at a time on the CPU)")
        return args, [[] for _ in range(args.jobs)]
    gpus, k = parse_gpus(args.gpus), args.gpus_per_job
    if k < 1 or len(gpus) < k:
        raise UserError(f"--gpus-per-job {k} with {len(gpus)} GPUs ({args.gpus})")
    return args, [gpus[i:i + k] for i in range(0, len(gpus) - k + 1, k)]


def plan(script: Path, overrides: list[str], gpus_per_job: int = 1) -> tuple[list[Job], Path]:
    """(the jobs of the sweep with their run directories, the sweep directory); UserError if two jobs share a run dir."""
    os.environ.setdefault("SIMAM_RUN_STAMP", time.strftime("%Y%m%d-%H%M%S"))  # one sweep dir for every job
    combos = expand(overrides)
    if gpus_per_job > 1 and not any(o.startswith("trainer.devices=") for o in overrides):
        combos = [c + [f"trainer.devices={gpus_per_job}"] for c in combos]
    dirs = [run_dir_of(_CONFIGS[script.name], c, i) for i, c in enumerate(combos)]
    jobs = [Job(i, c, run_dir) for i, (c, (_, run_dir)) in enumerate(zip(combos, dirs))]
    seen: dict[Path, Job] = {}
    for j in jobs:
        if j.run_dir in seen:
            raise UserError(f"jobs {seen[j.run_dir].index} and {j.index} would share the run dir {j.run_dir} "
                            f"({' '.join(seen[j.run_dir].overrides)} / {' '.join(j.overrides)}): put the swept key into "
                            "hydra.sweep.subdir, e.g. hydra.sweep.subdir='${data.name}-${model.arch}-${attention.name}-l${attention.e_lambda}-seed${seed}'")
        seen[j.run_dir] = j
    return jobs, dirs[0][0]


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


class Scheduler:
    """Runs jobs as child processes, one per free device slot, and records each in SWEEP_DIR/sweep.jsonl."""

    def __init__(self, script: Path, slots: list[list[str]], use_gpus: bool, record: Any) -> None:
        self.script, self.free, self.use_gpus, self.record = script, list(slots), use_gpus, record
        self.threads = max(1, (os.cpu_count() or 1) // len(slots))
        self.running: list[Job] = []
        self.failed: list[Job] = []

    def start(self, job: Job, slot: list[str]) -> None:
        env = dict(os.environ)
        if self.use_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
        else:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        job.run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(self.script), *job.overrides, f"hydra.run.dir={_quote(job.run_dir)}"]
        with open(job.run_dir / "console.log", "a") as log:
            job.proc = subprocess.Popen(cmd, cwd=os.getcwd(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append(job)
        job.slot, job.start = slot, time.time()
        where = f" on GPU {','.join(slot)}" if self.use_gpus else ""
        print(f"[{job.index}] start{where}: {' '.join(job.overrides)} -> {job.run_dir}", flush=True)

    def finish(self, job: Job) -> None:
        job.end, job.returncode = time.time(), job.proc.returncode
        self.record.write(json.dumps({"job": job.index, "overrides": job.overrides, "run_dir": str(job.run_dir), "devices": job.slot,
                                      "start": job.start, "end": job.end, "returncode": job.returncode}) + "\n")
        self.record.flush()
        state = "done" if job.returncode == 0 else f"FAILED (exit {job.returncode}, see {job.run_dir / 'console.log'})"
        print(f"[{job.index}] {state} in {job.end - job.start:.0f} s", flush=True)
        if job.returncode != 0:
            self.failed.append(job)

    def run(self, queue: list[Job]) -> int:
        """Run every job; 130 after passing SIGINT/SIGTERM on to the running ones."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _raise_stop)
        try:
            while queue or self.running:
                while queue and self.free:
                    self.start(queue.pop(0), self.free.pop(0))
                time.sleep(0.2)
                for job in [j for j in self.running if j.proc.poll() is not None]:
                    self.running.remove(job)
                    self.finish(job)
                    self.free.append(job.slot)
        except _Stop as stop:
            # the jobs run in sessions of their own (a terminal's Ctrl-C reaches only this process): pass the
            # signal on once; the trainer then saves last.pth after its current step and exits with code 3
            print(f"signal {stop.signum}: passing it to the {len(self.running)} running jobs, which save last.pth and stop", file=sys.stderr)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for job in self.running:
                job.proc.send_signal(stop.signum)
            for job in self.running:
                job.proc.wait()
                self.finish(job)
            return 130
        return 0


def _main(argv: list[str]) -> int:
    args, slots = _parse(argv)
    jobs, sweep_dir = plan(args.script, args.overrides, args.gpus_per_job if args.gpus else 1)
    pending = [j for j in jobs if not _is_complete(j.run_dir)]
    for j in jobs:
        if j not in pending:
            print(f"[{j.index}] skip (complete): {j.run_dir}")
    if args.dry_run:
        for j, slot in zip(pending, itertools.cycle(slots)):
            devices = f"CUDA_VISIBLE_DEVICES={','.join(slot)} " if args.gpus else ""
            print(f"[{j.index}] {devices}{shlex.join([sys.executable, str(args.script), *j.overrides, f'hydra.run.dir={_quote(j.run_dir)}'])}")
        print(f"{len(pending)} jobs, {len(slots)} at a time; sweep dir {sweep_dir}")
        return 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / "sweep.jsonl", "a") as record:
        scheduler = Scheduler(args.script, slots, bool(args.gpus), record)
        if scheduler.run(list(pending)) == 130:
            return 130
    done = f"{len(pending) - len(scheduler.failed)}/{len(pending)} jobs succeeded" if pending else "nothing to run: every run is complete"
    print(f"{done}; report: python scripts/report.py {sweep_dir}")
    return 1 if scheduler.failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
