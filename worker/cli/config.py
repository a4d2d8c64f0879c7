"""``ccsync config``: the settings a command would run with, each by its environment variable,
where it came from, and no secret: secrets show as masked, URLs without their credentials."""

from __future__ import annotations

import json
from typing import Final

import click
from pydantic import SecretStr

from worker.cli.settings import command_settings
from worker.observability.redaction import mask_url_credentials
from worker.settings import Settings

#: What a secret that is set shows as.
MASKED: Final = "********"


def effective_settings(settings: Settings) -> list[tuple[str, str | None, bool]]:
    """(variable, value as text or None when unset, whether it was set) for every setting, in
    the order ``Settings`` declares them; no secret in any value."""
    rows = []
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            text: str | None = MASKED
        elif isinstance(value, tuple):
            text = ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
        elif value is None:
            text = None
        else:
            text = mask_url_credentials(str(value))
        rows.append((str(info.validation_alias), text, name in settings.model_fields_set))
    return rows


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: variable to value.")
def config(as_json: bool) -> None:
    """Print the effective settings (environment and CCSYNC_SETTINGS_FILE), secrets masked."""
    rows = effective_settings(command_settings())
    if as_json:
        click.echo(json.dumps({variable: value for variable, value, _ in rows}, indent=2))
        return
    for variable, value, given in rows:
        shown = "(unset)" if value is None else value
        click.echo(f"{variable}={shown}" + ("" if given else "  # default"))
