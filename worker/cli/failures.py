"""How every ``ccsync`` command fails: one line naming the cause, non-zero exit, no traceback."""

from __future__ import annotations

from typing import Any, Final

import click
from amqp.exceptions import AMQPError
from click.exceptions import NoArgsIsHelpError
from kombu.exceptions import KombuError

from worker.exceptions import CcsyncError
from worker.observability.redaction import mask_url_credentials

#: The end of every command's help: what its exit status means (``\b`` keeps click's line breaks).
EXIT_STATUS_EPILOG: Final = """\b
Exit status:
  0    done (health: healthy; verify: no drift; validate: every event valid)
  1    failed, told in one line on stderr: a service unreachable, bad settings
       or input, unhealthy, drift found, an invalid event
  2    usage: an unknown option or a value the option refuses
  130  interrupted (Ctrl-C): what was done so far is kept
"""

#: Failures of the world outside ccsync (network, files, the broker's protocol) that a command may
#: meet where no ``CcsyncError`` names them yet: told in one line, by type and message.
OUTSIDE_FAILURES: Final = (OSError, KombuError, AMQPError)


class OneLineFailures(click.Group):
    """A command group whose commands, and those of its subgroups, fail in one line.

    A ``CcsyncError`` escaping a command becomes click's ``Error: <its message>`` on stderr with
    exit status 1; its message already names the cause with any secret masked. One of
    ``OUTSIDE_FAILURES`` becomes ``Error: <type>: <message>``, the credentials of any URL in it
    masked. A usage error (an unknown option, a value ``click`` refuses) keeps its exit status 2
    but is told in one line too, pointing to ``--help`` instead of printing the usage above it.
    Any other exception is a bug and keeps its traceback.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:  # the group's own options: the subcommands' are parsed within ``invoke``
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_in_one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_in_one_line(exc) from None
        except CcsyncError as exc:
            raise click.ClickException(one_line(str(exc)) or type(exc).__name__) from None
        except OUTSIDE_FAILURES as exc:
            text = one_line(str(exc))
            kind = type(exc).__name__
            raise click.ClickException(
                mask_url_credentials(f"{kind}: {text}" if text and text != kind else kind)
            ) from None


def _usage_in_one_line(exc: click.UsageError) -> click.UsageError:
    """``exc`` told in one line, or ``exc`` itself when it is the help asked for by no arguments."""
    if isinstance(exc, NoArgsIsHelpError):
        return exc
    where = exc.ctx.command_path if exc.ctx is not None else None
    hint = f" (see '{where} --help')" if where else ""
    return click.UsageError(one_line(exc.format_message()) + hint)  # no ctx: no usage printed


def one_line(text: str) -> str:
    """``text`` with every run of white space, line breaks included, made one space."""
    return " ".join(text.split())
