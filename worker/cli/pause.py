"""``ccsync pause`` and ``ccsync resume``: hold or release consumption for every worker of the
deployment (``worker.processing.pause``)."""

from __future__ import annotations

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


@click.command()
@click.option("--reason", default="", help="Why: shown in the logs, metrics and ccsync health.")
def pause(reason: str) -> None:
    """Stop every worker of the deployment from taking events, until ccsync resume."""
    settings = command_settings()
    store = _store(settings)
    now = Pause.now(reason.strip())
    try:
        earlier = store.pause(now)
    except LedgerUnavailable as exc:
        raise _unreachable(settings, exc) from None
    finally:
        store.close()
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
