"""The one writer of every file a run writes: checkpoints, best/epoch copies, summaries, eval files.

Each write goes to a temp file created exclusively (O_CREAT | O_EXCL, so never through a planted
symlink) under an unpredictable name in the target's directory, is fsync'ed and renamed over the
target with `os.replace`. A full disk or any other write error (torch.save reports ENOSPC as a
RuntimeError) is one `UserError` naming the file and the free space; the previous file is intact
and the temp file removed. PITFALLS: atomic saves, planted symlinks, torch.save's RuntimeError.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .errors import UserError

__all__ = ["TEMP_SUFFIX", "append_line", "copy_atomic", "finite", "json_line", "remove_stale_temps", "write_atomic", "write_json", "write_text"]

TEMP_SUFFIX = ".tmp"
_TEMP_PREFIX = "."


def _free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**20:.1f} MiB free"


def _open_exclusive(directory: Path, name: str) -> tuple[int, Path]:
    """A new file that did not exist (no symlink followed), with a random name beside `name`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = directory / f"{_TEMP_PREFIX}{name}.{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise UserError(f"cannot create a temporary file in {directory}: 100 random names were taken")


def write_atomic(path: os.PathLike | str, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(f)` on a fresh temp file beside `path`, fsync, rename over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {path}: {e.strerror or e}") from None
    fd, tmp = _open_exclusive(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot write {path}: {why} ({_free_space(path.parent)}); the previous file is kept") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_text(path: os.PathLike | str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def finite(obj: Any) -> Any:
    """The same structure with NaN/inf floats as None: valid JSON (a run whose best is still -inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of a .jsonl file (metrics.jsonl, evals.jsonl)."""
    return json.dumps(finite(obj), allow_nan=False)


def write_json(path: os.PathLike | str, obj: Any) -> None:
    write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def copy_atomic(src: os.PathLike | str, dst: os.PathLike | str) -> None:
    """Copy `src` to `dst` through the same temp-file protocol (best.pth, epoch_N.pth)."""
    def copy(f: BinaryIO) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)

    write_atomic(dst, copy)


def append_line(path: os.PathLike | str, line: str) -> None:
    """Append one line (metrics.jsonl, evals.jsonl): the whole file is rewritten atomically."""
    path = Path(path)
    old = path.read_bytes() if path.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    write_atomic(path, lambda f: f.write(old + line.rstrip("\n").encode("utf-8") + b"\n"))


def remove_stale_temps(directory: os.PathLike | str) -> list[Path]:
    """Delete temp files a killed writer left in `directory` (only this writer's name pattern)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(_TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX) and not p.is_dir()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
