"""The audit log: one line per operator action, saying who, from where, what and how many.

Lines go to the logger ``ccsync.console.audit`` (the console's stderr, JSON in production), so
they land wherever the deployment keeps its logs. Values are JSON-quoted when they need it: an
operator's filter text cannot forge a second line.
"""

from __future__ import annotations

import json
import logging
from typing import Final

AUDIT_LOGGER: Final = "ccsync.console.audit"

_log = logging.getLogger(AUDIT_LOGGER)


def _field(value: object) -> str:
    text = str(value)
    plain = text and all(ch.isascii() and ch.isprintable() and ch not in ' "=' for ch in text)
    return text if plain else json.dumps(text, ensure_ascii=True)


def audit_line(*, operator: str, address: str, action: str, **details: object) -> str:
    """``audit operator=… from=… action=… key=value…``, in one line."""
    fields = {"operator": operator, "from": address, "action": action, **details}
    return "audit " + " ".join(f"{key}={_field(value)}" for key, value in fields.items())


def audit(*, operator: str, address: str, action: str, **details: object) -> None:
    _log.info(audit_line(operator=operator, address=address, action=action, **details))
