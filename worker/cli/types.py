"""The option types shared by several commands: one type for one meaning, whichever command.

``--since`` is a moment, ``--customer`` a customerId, ``--rate`` a number of operations per
second, in every command that takes them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import click

from worker.dead_letter_queue.filters import parse_timestamp


class Timestamp(click.ParamType[datetime, "str | datetime"]):
    """An ISO 8601 date or timestamp, as an aware datetime (UTC when it names no offset)."""

    name = "timestamp"

    def convert(
        self, value: str | datetime, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_timestamp(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: ``--since`` and ``--until``.
TIMESTAMP: Final = Timestamp()
#: ``--customer``: a customerId, in any case.
CUSTOMER_ID: Final = click.UUID
#: ``--rate``: operations per second, more than none.
RATE: Final = click.FloatRange(min=0, min_open=True)
#: ``--port`` of the commands that serve HTTP.
PORT: Final = click.IntRange(min=1, max=65535)
