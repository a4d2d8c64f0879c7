"""The dead-letter store: a database of dead letters that operators search, page, replay and keep.

The queue ``ccsync.dead-letter`` stays the hand-off (quorum, confirmed, nothing lost while the
store is down); the keeper (``worker.dead_letter_queue.keeper``) moves each dead letter from it
into this store, acknowledging it only once its row is committed. Every row is keyed by the dead
letter's ``identity`` (a digest of its body, properties and headers, its delivery count aside), so
a dead letter delivered twice (a keeper killed before its ack) is stored once.

A row is ``waiting`` until an operator replays or purges it; a replay claims it first with one
atomic ``UPDATE ... WHERE state = 'waiting'``, so two operators never replay it twice. Replayed and
purged rows stay, as history, for the retention period, then the keeper deletes them.

SQLAlchemy Core, so that the same queries run on SQLite (a file: the embedded default) and on
PostgreSQL (a fleet: ``postgresql+psycopg:///NAME``). Times are stored as naive UTC.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from worker.dead_letter_queue.filters import DeadLetterFilter
from worker.dead_letter_queue.reading import DeadLetterRecord, identity
from worker.dead_letter_queue.stats import StatsGroup, error_type, group_stats, sorted_groups
from worker.processing.dead_letters import (
    decode_header_value,
    encode_header_value,
    json_safe_headers,
)

#: Seconds a connection to the store may take to open before the store counts as unreachable.
CONNECT_TIMEOUT_SECONDS: Final = 5
#: Seconds SQLite waits for another writer's lock before the statement fails.
SQLITE_BUSY_TIMEOUT_SECONDS: Final = 15.0
#: Rows one statement inserts or claims at most (SQLite binds at most 32,766 parameters).
CHUNK: Final = 500
#: Seconds a replay's claim may stay unsettled before the keeper hands the row back to
#: ``waiting`` (its replayer was killed between claim and outcome).
CLAIM_TIMEOUT_SECONDS: Final = 600.0

WAITING: Final = "waiting"
REPLAYING: Final = "replaying"
REPLAYED: Final = "replayed"
PURGED: Final = "purged"
STATES: Final = (WAITING, REPLAYING, REPLAYED, PURGED)

metadata = sa.MetaData()

letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("event_id", sa.String(255)),
    sa.Column("tenant", sa.String(255)),  # lower case, as tenants compare
    sa.Column("customer_id", sa.String(255)),  # lower case, as customer ids compare
    sa.Column("reason", sa.String(64)),
    sa.Column("status", sa.Integer),
    sa.Column("error_type", sa.String(255)),
    sa.Column("dead_lettered_at", sa.DateTime),
    sa.Column("stored_at", sa.DateTime, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("content_type", sa.Text),
    sa.Column("content_encoding", sa.Text),
    sa.Column("headers", sa.Text, nullable=False),  # encode_header_value's JSON
    sa.Column("properties", sa.Text, nullable=False),
    sa.Column("claimed_at", sa.DateTime),
    sa.Column("claimed_by", sa.Text),
    sa.Column("job", sa.Text),
    sa.Column("settled_at", sa.DateTime),  # replayed or purged: retention counts from here
    sa.Column("settled_by", sa.Text),
    # The overview's groups and the list's first page: the waiting ones, by group and by age.
    sa.Index("ix_dead_letters_group", "state", "reason", "status", "error_type"),
    sa.Index("ix_dead_letters_age", "state", "dead_lettered_at", "id"),
    sa.Index("ix_dead_letters_event", "event_id"),
    sa.Index("ix_dead_letters_customer", "customer_id"),
    sa.Index("ix_dead_letters_settled", "settled_at"),
)

history = sa.Table(
    "dead_letter_history",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("letter_id", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.DateTime, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # replay, purge
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("who", sa.Text),
    sa.Column("job", sa.Text),
)


class StoreUnavailable(Exception):
    """The dead-letter store cannot be reached: check CCSYNC_DLQ_STORE_URL and the database."""


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class StoredLetter:
    """One row: the dead letter itself (``record``) and what became of it."""

    id: str
    state: str
    record: DeadLetterRecord
    stored_at: datetime
    settled_at: datetime | None
    settled_by: str | None
    job: str | None

    def summary(self) -> dict[str, Any]:
        """``record.summary()`` with the row's id and state (``dlq list --json``)."""
        return {
            "id": self.id,
            "state": self.state,
            **self.record.summary(),
            "settledAt": None if self.settled_at is None else self.settled_at.isoformat(),
            "settledBy": self.settled_by,
            "job": self.job,
        }


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    action: str
    outcome: str
    who: str | None
    job: str | None
    letter_id: str


@dataclass(frozen=True)
class Page:
    letters: list[StoredLetter]
    total: int  # how many match in all
    number: int
    size: int

    @property
    def more(self) -> bool:
        return self.number * self.size < self.total


def _row(record: DeadLetterRecord, stored_at: datetime) -> dict[str, Any]:
    tenant, customer = record.tenant, record.customer_id
    return {
        "id": identity(record),
        "state": WAITING,
        "event_id": record.event_id,
        "tenant": None if tenant is None else tenant.casefold(),
        "customer_id": None if customer is None else customer.lower(),
        "reason": record.reason,
        "status": record.status,
        "error_type": error_type(record.error),
        "dead_lettered_at": _utc(record.dead_lettered_at),
        "stored_at": stored_at,
        "body": record.body,
        "content_type": record.content_type,
        "content_encoding": record.content_encoding,
        "headers": json.dumps(encode_header_value(record.lasting_headers)),
        "properties": json.dumps(encode_header_value(dict(record.properties))),
    }


def _letter(row: Any) -> StoredLetter:
    headers = decode_header_value(json.loads(row.headers))
    record = DeadLetterRecord(
        delivery_tag=0,
        body=bytes(row.body),
        content_type=row.content_type,
        headers=json_safe_headers(headers),
        content_encoding=row.content_encoding,
        raw_headers=headers,
        properties=decode_header_value(json.loads(row.properties)),
    )
    return StoredLetter(
        id=row.id,
        state=row.state,
        record=record,
        stored_at=_aware(row.stored_at) or datetime.now(UTC),
        settled_at=_aware(row.settled_at),
        settled_by=row.settled_by,
        job=row.job,
    )


def _insert(engine: Engine) -> Any:
    """An INSERT that skips rows whose id is already stored (a dead letter delivered again)."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(letters).on_conflict_do_nothing(index_elements=["id"])


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL: readers (the console, ``dlq list``) never wait for the keeper's writes.
    # synchronous FULL: a committed batch survives a crash of the machine, not only of ccsync,
    # because the keeper acks the queue right after the commit.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class DeadLetterStore:
    """The store behind ``url`` (SQLAlchemy's URL: ``sqlite:///file.db``, ``postgresql+psycopg:///db``).

    Every method opens and commits its own transaction; any failure to reach the database is
    ``StoreUnavailable``.
    """

    def __init__(self, url: str) -> None:
        url_object = sa.make_url(url)
        if url_object.get_backend_name() == "sqlite":
            self.engine = sa.create_engine(
                url_object, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(
                url_object,
                pool_pre_ping=True,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
            )
        self._created = False

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> DeadLetterStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _begin(self) -> Any:
        """A transaction on a store whose tables exist (created on first use)."""
        try:
            if not self._created:
                metadata.create_all(self.engine)
                self._created = True
            return self.engine.begin()
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(f"the dead-letter store is unreachable: {exc.orig}") from None

    def _run(self, work: Any) -> Any:
        try:
            with self._begin() as connection:
                return work(connection)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(f"the dead-letter store is unreachable: {exc.orig}") from None

    def ping(self) -> None:
        """Raises ``StoreUnavailable`` unless the store answers now."""
        self._run(lambda connection: connection.execute(sa.text("SELECT 1")))

    # -- intake --------------------------------------------------------------------------------

    def add(self, records: Iterable[DeadLetterRecord]) -> int:
        """Stores the dead letters in one transaction; those stored already are skipped.
        Returns how many rows are new. Once it returns, every one of them is committed."""
        stored_at = _now()
        rows = list({row["id"]: row for row in (_row(r, stored_at) for r in records)}.values())
        if not rows:
            return 0

        def insert(connection: Any) -> int:
            # RETURNING counts what was new: executemany's rowcount is -1 on psycopg.
            statement = _insert(self.engine).returning(letters.c.id)
            return sum(
                len(connection.execute(statement, list(chunk)).all()) for chunk in _chunks(rows)
            )

        return int(self._run(insert))

    # -- reading -------------------------------------------------------------------------------

    def _where(self, filters: DeadLetterFilter, states: Sequence[str]) -> list[Any]:
        """The filters as SQL. A tenant filter also lets tenant-less rows through: their tenant
        is told by their correlation id, which ``filters.matches`` checks afterwards."""
        where: list[Any] = [letters.c.state.in_(states)]
        if filters.reasons:
            where.append(letters.c.reason.in_(sorted(filters.reasons)))
        if filters.statuses:
            where.append(letters.c.status.in_(sorted(filters.statuses)))
        if filters.event_ids:
            where.append(letters.c.event_id.in_(sorted(filters.event_ids)))
        if filters.customers:
            where.append(letters.c.customer_id.in_(sorted(filters.customers)))
        if filters.tenants:
            named = [tenant.casefold() for tenant in filters.tenants]
            where.append(sa.or_(letters.c.tenant.in_(named), letters.c.tenant.is_(None)))
        if filters.since is not None:
            where.append(letters.c.dead_lettered_at >= _utc(filters.since))
        if filters.until is not None:
            where.append(letters.c.dead_lettered_at < _utc(filters.until))
        return where

    def page(
        self,
        filters: DeadLetterFilter,
        *,
        number: int = 1,
        size: int = 100,
        states: Sequence[str] = (WAITING,),
    ) -> Page:
        """Page ``number`` (from 1) of the matching dead letters, the oldest first."""
        where = self._where(filters, states)
        order = (letters.c.dead_lettered_at, letters.c.id)

        def read(connection: Any) -> Page:
            total = connection.execute(
                sa.select(sa.func.count()).select_from(letters).where(*where)
            ).scalar_one()
            rows = connection.execute(
                sa.select(letters)
                .where(*where)
                .order_by(*order)
                .limit(size)
                .offset((number - 1) * size)
            )
            found = [_letter(row) for row in rows]
            if filters.tenants:  # the tenant-less rows the SQL let through
                kept = [letter for letter in found if filters.matches(letter.record)]
                total -= len(found) - len(kept)
                found = kept
            return Page(found, total, number, size)

        result: Page = self._run(read)
        return result

    def matching(
        self, filters: DeadLetterFilter, *, states: Sequence[str] = (WAITING,)
    ) -> Iterator[StoredLetter]:
        """Every matching dead letter, the oldest first, read in pages of ``CHUNK`` (keyset)."""
        where = self._where(filters, states)
        after: tuple[Any, str] | None = None
        while True:
            bound = list(where)
            if after is not None:
                moment, last_id = after
                bound.append(
                    sa.tuple_(sa.func.coalesce(letters.c.dead_lettered_at, _EPOCH), letters.c.id)
                    > sa.tuple_(sa.literal(moment or _EPOCH), sa.literal(last_id))
                )
            statement = (
                sa.select(letters)
                .where(*bound)
                .order_by(sa.func.coalesce(letters.c.dead_lettered_at, _EPOCH), letters.c.id)
                .limit(CHUNK)
            )
            rows = self._run(lambda connection, s=statement: list(connection.execute(s)))
            if not rows:
                return
            for row in rows:
                letter = _letter(row)
                if not filters.tenants or filters.matches(letter.record):
                    yield letter
            after = (rows[-1].dead_lettered_at, rows[-1].id)

    def stats(
        self, filters: DeadLetterFilter, *, states: Sequence[str] = (WAITING,)
    ) -> list[StatsGroup]:
        """Counts by reason, status and error type, oldest and newest: one aggregate query."""
        where = self._where(filters, states)
        if filters.tenants:
            return group_stats(letter.record for letter in self.matching(filters, states=states))
        statement = (
            sa.select(
                letters.c.reason,
                letters.c.status,
                letters.c.error_type,
                sa.func.count(),
                sa.func.min(letters.c.dead_lettered_at),
                sa.func.max(letters.c.dead_lettered_at),
            )
            .where(*where)
            .group_by(letters.c.reason, letters.c.status, letters.c.error_type)
        )
        rows = self._run(lambda connection: list(connection.execute(statement)))
        return sorted_groups(
            StatsGroup(
                reason, status, kind, count=count, oldest=_aware(oldest), newest=_aware(newest)
            )
            for reason, status, kind, count, oldest, newest in rows
        )

    def counts_by_minute(
        self, *, states: Sequence[str] = (WAITING,)
    ) -> list[tuple[str | None, datetime | None, int]]:
        """(reason, minute, count): the overview's chart as one aggregate query, a row per
        reason and minute (a minute of None counts those without a time)."""
        column = letters.c.dead_lettered_at
        if self.engine.dialect.name == "postgresql":
            minute: Any = sa.func.date_trunc("minute", column)
        else:
            minute = sa.func.strftime("%Y-%m-%d %H:%M:00", column)
        statement = (
            sa.select(letters.c.reason, minute, sa.func.count())
            .where(letters.c.state.in_(states))
            .group_by(letters.c.reason, minute)
        )
        rows = self._run(lambda connection: list(connection.execute(statement)))
        return [
            (
                reason,
                _aware(datetime.fromisoformat(at) if isinstance(at, str) else at),
                int(count),
            )
            for reason, at, count in rows
        ]

    def get(self, letter_id: str) -> StoredLetter | None:
        """The row of ``letter_id`` (its full id, or a prefix of at least 12 hex digits)."""
        column = letters.c.id
        condition = column == letter_id if len(letter_id) >= 64 else column.like(f"{letter_id}%")
        statement = sa.select(letters).where(condition).limit(2)
        rows = self._run(lambda connection: list(connection.execute(statement)))
        return _letter(rows[0]) if len(rows) == 1 else None

    def history(self, letter: StoredLetter) -> tuple[list[StoredLetter], list[HistoryEntry]]:
        """Every dead-lettering of ``letter``'s event (itself included, the oldest first) and
        every replay and purge of any of them."""
        event_id = letter.record.event_id
        condition = letters.c.id == letter.id
        if event_id is not None:
            condition = sa.or_(condition, letters.c.event_id == event_id)

        def read(connection: Any) -> tuple[list[StoredLetter], list[HistoryEntry]]:
            rows = [
                _letter(row)
                for row in connection.execute(
                    sa.select(letters).where(condition).order_by(letters.c.dead_lettered_at)
                )
            ]
            ids = [row.id for row in rows]
            entries = [
                HistoryEntry(
                    _aware(entry.at) or entry.at,
                    entry.action,
                    entry.outcome,
                    entry.who,
                    entry.job,
                    entry.letter_id,
                )
                for entry in connection.execute(
                    sa.select(history).where(history.c.letter_id.in_(ids)).order_by(history.c.seq)
                )
            ]
            return rows, entries

        found: tuple[list[StoredLetter], list[HistoryEntry]] = self._run(read)
        return found

    # -- changes -------------------------------------------------------------------------------

    def claim(self, ids: Sequence[str], *, who: str, job: str) -> set[str]:
        """Takes the ``waiting`` ones of ``ids`` for a replay; returns those this call took.

        One ``UPDATE ... WHERE state = 'waiting'`` per chunk: of two replayers racing for a dead
        letter exactly one changes its row, so no dead letter is replayed twice.
        """
        now = _now()

        def take(connection: Any) -> set[str]:
            taken: set[str] = set()
            for chunk in _chunks(ids):
                connection.execute(
                    letters.update()
                    .where(letters.c.id.in_(chunk), letters.c.state == WAITING)
                    .values(state=REPLAYING, claimed_at=now, claimed_by=who, job=job)
                )
                taken.update(
                    connection.execute(
                        sa.select(letters.c.id).where(
                            letters.c.id.in_(chunk),
                            letters.c.state == REPLAYING,
                            letters.c.job == job,
                        )
                    ).scalars()
                )
            return taken

        claimed: set[str] = self._run(take)
        return claimed

    def settle_replays(
        self,
        *,
        confirmed: Sequence[str],
        failed: Sequence[str],
        who: str,
        job: str,
        released: Sequence[str] = (),
    ) -> None:
        """Marks the confirmed ones replayed, hands the failed ones back to ``waiting``, both
        recorded in their history; ``released`` (claimed, never published) go back silently."""
        now = _now()

        def settle(connection: Any) -> None:
            for chunk in _chunks(confirmed):
                connection.execute(
                    letters.update()
                    .where(letters.c.id.in_(chunk), letters.c.job == job)
                    .values(state=REPLAYED, settled_at=now, settled_by=who)
                )
            for chunk in _chunks([*failed, *released]):
                connection.execute(
                    letters.update()
                    .where(letters.c.id.in_(chunk), letters.c.job == job)
                    .values(state=WAITING, claimed_at=None, claimed_by=None)
                )
            outcomes = [(confirmed, "published, confirmed"), (failed, "not confirmed: waiting")]
            entries = [
                {"letter_id": i, "at": now, "action": "replay", "outcome": outcome}
                | {"who": who, "job": job}
                for ids, outcome in outcomes
                for i in ids
            ]
            if entries:
                connection.execute(history.insert(), entries)

        self._run(settle)

    def purge(self, ids: Sequence[str], *, who: str, job: str | None = None) -> int:
        """Marks the ``waiting`` ones of ``ids`` purged (kept for the retention period)."""
        now = _now()

        def purge(connection: Any) -> int:
            purged = 0
            for chunk in _chunks(ids):
                taken = list(
                    connection.execute(
                        letters.update()
                        .where(letters.c.id.in_(chunk), letters.c.state == WAITING)
                        .values(state=PURGED, settled_at=now, settled_by=who, job=job)
                        .returning(letters.c.id)
                    ).scalars()
                )
                purged += len(taken)
                if taken:
                    connection.execute(
                        history.insert(),
                        [
                            {"letter_id": i, "at": now, "action": "purge", "outcome": "purged"}
                            | {"who": who, "job": job}
                            for i in taken
                        ],
                    )
            return purged

        return int(self._run(purge))

    def expire(self, *, retention: timedelta, now: datetime | None = None) -> int:
        """Deletes the replayed and purged dead letters settled longer than ``retention`` ago,
        with their history; hands claims older than ``CLAIM_TIMEOUT_SECONDS`` back to waiting.
        Returns how many dead letters were deleted."""
        moment = _utc(now) or _now()
        cutoff = moment - retention
        stale = moment - timedelta(seconds=CLAIM_TIMEOUT_SECONDS)
        old = sa.select(letters.c.id).where(
            letters.c.state.in_((REPLAYED, PURGED)), letters.c.settled_at < cutoff
        )

        def delete(connection: Any) -> int:
            connection.execute(history.delete().where(history.c.letter_id.in_(old)))
            deleted = connection.execute(
                letters.delete().where(
                    letters.c.state.in_((REPLAYED, PURGED)), letters.c.settled_at < cutoff
                )
            ).rowcount
            connection.execute(
                letters.update()
                .where(letters.c.state == REPLAYING, letters.c.claimed_at < stale)
                .values(state=WAITING, claimed_at=None, claimed_by=None)
            )
            return int(deleted)

        return int(self._run(delete))

    def count(self, *, states: Sequence[str] = (WAITING,)) -> int:
        statement = (
            sa.select(sa.func.count()).select_from(letters).where(letters.c.state.in_(states))
        )
        return int(self._run(lambda connection: connection.execute(statement).scalar_one()))


_EPOCH: Final = datetime(1970, 1, 1)
