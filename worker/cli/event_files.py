"""Reading the events a command is given: a file, or standard input for ``-``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import click

from worker.amqp.event_publishing import read_event_file, read_event_text
from worker.exceptions import InputError

#: How an event argument names standard input.
STDIN: Final = "-"


def read_event_argument(path: Path) -> list[dict[str, Any]]:
    """The events of ``path``, or of standard input when it is ``-``."""
    if str(path) != STDIN:
        return read_event_file(path)
    try:
        with click.open_file(STDIN, "r", encoding="utf-8") as stream:
            text = stream.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"standard input: not UTF-8 text (byte {exc.start})") from None
    return read_event_text(text, where="standard input")
