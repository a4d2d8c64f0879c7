"""What the console needs to start: the settings, and the operators' token it refuses to run
without."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from worker.exceptions import ConfigurationError
from worker.settings import Settings

#: The shortest ``CCSYNC_CONSOLE_TOKEN`` accepted: shorter ones could be guessed despite the
#: login rate limit.
MIN_TOKEN_CHARS: Final = 16
#: Seconds a session lasts after login; then the operator logs in again.
SESSION_SECONDS: Final = 8 * 3600
#: Seconds the console waits for RabbitMQ on each request or job before it reports a failure.
BROKER_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class ConsoleConfig:
    settings: Settings
    token: str
    session_seconds: int = SESSION_SECONDS
    broker_timeout: float = BROKER_TIMEOUT


def console_config(settings: Settings) -> ConsoleConfig:
    """The console's configuration; ``ConfigurationError`` (one line) without a usable token."""
    if settings.console_token is None:
        raise ConfigurationError(
            "CCSYNC_CONSOLE_TOKEN is required: operators log in to the console with it"
        )
    token = settings.console_token.get_secret_value()
    if len(token.strip()) < MIN_TOKEN_CHARS:
        raise ConfigurationError(
            f"CCSYNC_CONSOLE_TOKEN: at least {MIN_TOKEN_CHARS} characters, like the output of "
            "'openssl rand -hex 24'"
        )
    return ConsoleConfig(settings=settings, token=token)
