"""Secrets kept off every page and API answer: the settings' secrets and the console token.

Reuses ``worker.ops.health.Redactor`` (token, client secret, Sentry DSN, URL passwords) and adds
the console's own token, which only the console knows about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from markupsafe import Markup

from worker.ops.health import Redactor

#: What a removed secret is shown as.
MASK: Final = "***"


class Redaction:
    """Callable on a text: the text without any secret the console knows of."""

    def __init__(self, redactor: Redactor, console_token: str) -> None:
        self._redactor = redactor
        self._console_token = console_token

    def text(self, text: str) -> str:
        return self._redactor(text).replace(self._console_token, MASK)

    def value(self, value: Any) -> Any:
        """Jinja's ``finalize``: every expression a template prints goes through here.

        Markup stays Markup (its own escaping already happened; the masks hold no markup).
        """
        if isinstance(value, Markup):
            return Markup(self.text(str(value)))
        if isinstance(value, str):
            return self.text(value)
        return value

    def tree(self, value: Any) -> Any:
        """A JSON-able structure with every string (keys too) redacted, for API answers."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(key)): self.tree(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.tree(item) for item in value]
        return value
