"""Settings for a command: a problem with them is one line and a non-zero exit, never a trace."""

from __future__ import annotations

import click

from worker.exceptions import ConfigurationError
from worker.settings import Settings, load_settings


def command_settings() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
