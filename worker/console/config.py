"""What the console needs to start: the settings, and the operators' token it refuses to run
without (or with one that could be guessed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from worker.exceptions import ConfigurationError
from worker.settings import Settings

#: The shortest ``CCSYNC_CONSOLE_TOKEN`` accepted.
MIN_TOKEN_CHARS: Final = 32
#: The least randomness a token must be able to hold, estimated as its length times the bits of
#: one of its distinct characters: a floor against a short, repeated or one-letter token, not a
#: measure of how random it is. 64 hex digits hold 256 bits, 43 base64url characters 258.
MIN_TOKEN_BITS: Final = 128
#: How to make a token that passes, quoted by the error.
TOKEN_RECIPE: Final = "openssl rand -hex 32"
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


def token_bits(token: str) -> float:
    """The estimate ``MIN_TOKEN_BITS`` is compared with."""
    distinct = len(set(token))
    return len(token) * math.log2(distinct) if distinct > 1 else 0.0


def console_config(settings: Settings) -> ConsoleConfig:
    """The console's configuration; ``ConfigurationError`` (one line) without a token hard to
    guess."""
    if settings.console_token is None:
        raise ConfigurationError(
            "CCSYNC_CONSOLE_TOKEN is required: operators log in to the console with it"
        )
    token = settings.console_token.get_secret_value()
    if len(token.strip()) < MIN_TOKEN_CHARS or token_bits(token) < MIN_TOKEN_BITS:
        raise ConfigurationError(
            f"CCSYNC_CONSOLE_TOKEN could be guessed: use at least {MIN_TOKEN_CHARS} random "
            f"characters, like the output of '{TOKEN_RECIPE}'"
        )
    return ConsoleConfig(settings=settings, token=token)
