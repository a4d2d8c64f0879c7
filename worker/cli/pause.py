"""``ccsync pause`` and ``ccsync resume``: hold or release consumption for every worker of the
deployment (``worker.processing.pause``)."""

from __future__ import annotations

import json

import click

from worker.cli.settings import command_settings
from worker.exceptions import LedgerUnavailable
from worker.observability.redaction import Redaction
from worker.processing.pause import POLL_SECONDS, Pause, PauseStore, virtual_host
from worker.settings import Settings


def _store(settings: Settings) -> PauseStore:
    return PauseStore.from_url(settings.redis_url, deployment=virtual_host(settings.broker_url))


def _unreachable(settings: Settings, exc: LedgerUnavailable) -> click.ClickException:
    return click.ClickException(
        Redaction.from_settings(settings).text(f"cannot reach Redis at {settings.redis_url}: {exc}")
    )


def _pause_json(pause: Pause | None, settings: Settings, **extra: object) -> str:
    state = json.loads(pause.to_json()) if pause is not None else {}
    return json.dumps(
        {"paused": pause is not None, **state, "virtual_host": virtual_host(settings.broker_url)}
        | extra
    )


@click.command()
@click.option("--reason", default="", help="Why: shown in the logs, metrics and ccsync health.")
@click.option("--status", is_flag=True, help="Only say whether the deployment is paused.")
@click.option("--json", "as_json", is_flag=True, help="The pause as one JSON object.")
def pause(reason: str, status: bool, as_json: bool) -> None:
    """Stop every worker of the deployment from taking events, until ccsync resume.

    With --status, change nothing: say whether, by whom, when and why it is paused.
    """
    settings = command_settings()
    store = _store(settings)
    now = Pause.now(reason.strip())
    try:
        earlier = store.read() if status else store.pause(now)
    except LedgerUnavailable as exc:
        raise _unreachable(settings, exc) from None
    finally:
        store.close()
    if status:
        if as_json:
            click.echo(_pause_json(earlier, settings))
        else:
            click.echo(earlier.describe() if earlier is not None else "not paused: consuming")
        return
    if as_json:
        click.echo(_pause_json(now, settings, was_paused=earlier is not None))
        return
    if earlier is not None:
        click.echo(f"was already {earlier.describe()}")
    click.echo(
        f"{now.describe()} (virtual host {virtual_host(settings.broker_url)}): every worker stops "
        f"taking events within {POLL_SECONDS + 1:.0f} s, finishing those in hand; workers that "
        "start stay paused until ccsync resume"
    )


@click.command()
def resume() -> None:
    """Let every worker of the deployment take events again."""
    settings = command_settings()
    store = _store(settings)
    try:
        lifted = store.resume()
    except LedgerUnavailable as exc:
        raise _unreachable(settings, exc) from None
    finally:
        store.close()
    if lifted is None:
        click.echo("not paused: nothing to resume")
        return
    now = Pause.now("")
    click.echo(
        f"resumed by {now.by} at {now.at}: the pause ({lifted.describe()}) is lifted; every worker "
        f"takes events again within {POLL_SECONDS + 1:.0f} s"
    )
