"""What the console needs to start: the settings, and the operators' token it refuses to run
without (or with one that could be guessed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from worker.exceptions import ConfigurationError
from worker.settings import Settings, require_strong_token

#: Seconds a session lasts after login; then the operator logs in again.
SESSION_SECONDS: Final = 8 * 3600
#: Seconds a session lasts unused (no page opened, no action); the page's own polls do not count.
SESSION_IDLE_SECONDS: Final = 30 * 60
#: Seconds the console waits for RabbitMQ on each request or job before it reports a failure.
BROKER_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class ConsoleConfig:
    settings: Settings
    token: str
    session_seconds: int = SESSION_SECONDS
    session_idle_seconds: int = SESSION_IDLE_SECONDS
    broker_timeout: float = BROKER_TIMEOUT


def console_config(settings: Settings) -> ConsoleConfig:
    """The console's configuration; ``ConfigurationError`` (one line) without a token hard to
    guess."""
    if settings.console_token is None:
        raise ConfigurationError(
            "CCSYNC_CONSOLE_TOKEN is required: operators log in to the console with it"
        )
    try:
        require_strong_token(settings.console_token)
    except ValueError as exc:
        raise ConfigurationError(f"CCSYNC_CONSOLE_TOKEN: {exc}") from None
    return ConsoleConfig(settings=settings, token=settings.console_token.get_secret_value())
