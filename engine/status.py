"""status.json: what state a run is in, for people and for scripts/report.py.

    {"state": "running" | "done" | "failed" | "preempted", "epoch": int | null, "error": str | null,
     "exit_code": int | null, "updated": ISO time}
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from .files import write_json

__all__ = ["STATES", "write_status"]

STATES = ("running", "done", "failed", "preempted")


def write_status(path: os.PathLike | str, state: str, *, epoch: Optional[int] = None, error: Optional[str] = None,
                 exit_code: Optional[int] = None) -> None:
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    write_json(Path(path), {"state": state, "epoch": epoch, "error": error, "exit_code": exit_code,
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})
