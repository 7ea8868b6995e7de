"""DataError: the data side's UserError, one line even when raised in a DataLoader worker."""
from __future__ import annotations

from engine.errors import UserError

__all__ = ["DataError"]


class DataError(UserError):
    """A UserError about the data; its message stays one line even from a DataLoader worker.

    A worker's exception reaches the main process re-created as `type(err)(traceback_text)`;
    the last line of that text is "engine.data.errors.DataError: <original message>", which
    __init__ extracts again.
    """

    def __init__(self, message: str) -> None:
        lines = message.strip().splitlines()
        if len(lines) > 1 and lines[-1].startswith(f"{__name__}.DataError: "):
            message = lines[-1].split(": ", 1)[1]
        super().__init__(" ".join(message.split("\n")))
