"""Export and import: dead letters as JSON lines, to archive them or move them between brokers.

One line per dead letter. The body is base64, so bytes that are not UTF-8 (an invalid event may
be anything) survive; content type, content encoding and every application header are kept.
Header values JSON cannot hold are tagged (``{"$timestamp": ...}``, ``{"$base64": ...}``,
``{"$decimal": ...}``) and come back as the same AMQP types. The operator's summary fields
(``eventId``, ``reason``, ...) ride along for reading and grepping; import ignores them.

An export holds no secret of ccsync's: the body, the headers and the summary pass the redaction of
``worker.observability.redaction`` (so an imported dead letter holds ``***`` where one was).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Final

from kombu import Connection

from worker.amqp.topology import declare_topology
from worker.constants import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from worker.dead_letter_queue.confirm_window import ConfirmWindow
from worker.dead_letter_queue.errors import DeadLetterError
from worker.dead_letter_queue.filters import DeadLetterFilter, Selection, select
from worker.dead_letter_queue.reading import DeadLetterRecord
from worker.dead_letter_queue.store import WAITING, DeadLetterStore
from worker.observability.redaction import Redaction
from worker.processing.dead_letters import (
    decode_header_value,
    encode_header_value,
    json_safe_headers,
)

FORMAT: Final = "ccsync-dead-letter/1"
#: Imported dead letters awaiting their confirms at most.
WINDOW: Final = 256


def to_line(record: DeadLetterRecord, *, redaction: Redaction) -> str:
    """One dead letter as one line of JSON (no newline), without any secret ``redaction`` knows."""
    described = {
        "format": FORMAT,
        **record.summary(),
        "contentType": record.content_type,
        "contentEncoding": record.content_encoding,
        "headers": encode_header_value(dict(record.original_headers)),
    }
    # The body is redacted as bytes, before base64 (which the redaction of text could break).
    body = base64.b64encode(redaction.bytes(record.body)).decode("ascii")
    line = {**redaction.tree(described), "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def from_line(text: str) -> DeadLetterRecord:
    """The dead letter of one exported line; raises ``ValueError`` saying what is wrong."""
    line = json.loads(text)
    if not isinstance(line, dict) or line.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} line")
    headers = decode_header_value(line.get("headers") or {})
    if not isinstance(headers, dict):
        raise ValueError("headers must be an object")
    try:
        body = base64.b64decode(str(line["body"]), validate=True)
    except (KeyError, binascii.Error):
        raise ValueError("body must be base64") from None
    return DeadLetterRecord(
        delivery_tag=0,
        body=body,
        content_type=line.get("contentType"),
        headers=json_safe_headers(headers),
        content_encoding=line.get("contentEncoding"),
        raw_headers=headers,
    )


def read_lines(lines: Iterable[str]) -> list[DeadLetterRecord]:
    """Every dead letter of a file, or an error naming the first bad line: all or nothing."""
    records = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            records.append(from_line(text))
        except (ValueError, TypeError) as exc:
            raise DeadLetterError(f"line {number}: {exc}") from None
    return records


@dataclass
class TransferReport:
    examined: int = 0
    matched: int = 0
    written: int = 0  # exported lines, or imported dead letters confirmed by the broker
    removed: int = 0
    failed: int = 0


def _write(
    records: Iterable[DeadLetterRecord], out: IO[str], *, redaction: Redaction, sync: bool
) -> list[DeadLetterRecord]:
    """Writes ``records`` as lines, flushed (and, ``sync``, synced); returns those written."""
    written: list[DeadLetterRecord] = []
    for record in records:
        with _output_failures():
            out.write(to_line(record, redaction=redaction) + "\n")
        written.append(record)
    with _output_failures():
        out.flush()
        if sync:
            _sync(out)
    return written


def export_stored(
    store: DeadLetterStore,
    filters: DeadLetterFilter,
    out: IO[str],
    *,
    redaction: Redaction,
    who: str,
    limit: int | None = None,
    remove: bool = False,
    states: Sequence[str] = (WAITING,),
) -> TransferReport:
    """Writes the matching dead letters of the store to ``out`` (``to_line``); with ``remove``,
    marks them purged once the file is synced (an error writing raises before any is)."""
    chosen = list(itertools.islice(store.matching(filters, states=states), limit))
    by_record = {id(letter.record): letter.id for letter in chosen}
    written = _write((letter.record for letter in chosen), out, redaction=redaction, sync=remove)
    report = TransferReport(examined=len(chosen), matched=len(chosen), written=len(written))
    if remove:
        report.removed = store.purge([by_record[id(record)] for record in written], who=who)
    return report


#: What ``fsync`` answers for an output that has no disk behind it to sync: nothing is lost there.
UNSYNCABLE_ERRNOS: Final = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


@contextlib.contextmanager
def _output_failures() -> Iterator[None]:
    """Any failure of the export's output (ENOSPC, EDQUOT, EIO...) as a ``DeadLetterError``."""
    try:
        yield
    except OSError as exc:
        raise DeadLetterError(
            f"writing the export failed: {exc.strerror or exc}; nothing was removed"
        ) from None


def _sync(out: IO[str]) -> None:
    """Syncs the flushed ``out`` to disk; raises ``OSError`` unless it cannot be synced at all."""
    try:
        descriptor = out.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return  # in memory: there is no disk behind it
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno not in UNSYNCABLE_ERRNOS:
            raise


def import_dead_letters(
    connection: Connection,
    records: Iterable[DeadLetterRecord],
    filters: DeadLetterFilter,
    *,
    limit: int | None = None,
    on_examined: Callable[[int], None] | None = None,
) -> TransferReport:
    """Publishes dead letters (as read by ``read_lines``) into ccsync.dead-letter, confirmed."""
    report = TransferReport()
    selection = Selection()
    declare_topology(connection)
    confirms: ConfirmWindow[int] = ConfirmWindow(connection)

    def settle() -> None:
        confirmed, failed = confirms.settle()
        report.written += len(confirmed)
        report.failed += len(failed)

    try:
        for record in select(
            records, filters, limit=limit, selection=selection, on_examined=on_examined
        ):
            confirms.publish(
                0, record.envelope(), exchange=DEAD_LETTER_EXCHANGE, routing_key=DEAD_LETTER_QUEUE
            )
            if confirms.pending >= WINDOW:
                settle()
        settle()
    finally:
        confirms.close()
        report.examined, report.matched = selection.examined, selection.matched
    return report
