"""Which dead letters a page or an action means: the list's filters, read from a query string or
a form, and written back into links and hidden fields.

The filters are ``worker.dead_letter_queue.filters.DeadLetterFilter``, as for ``ccsync dlq``;
the field names are the CLI's option names with ``_`` for ``-``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from worker.dead_letter_queue.filters import DeadLetterFilter

#: The repeatable filter fields, in the order links spell them.
MULTI_FIELDS = ("reason", "status", "tenant", "customer", "event_id")
#: The time range fields: ISO timestamps, UTC without an offset.
TIME_FIELDS = ("since", "until")


@dataclass(frozen=True)
class SelectionQuery:
    """Filter fields as text, as the operator typed them; ``problem`` says what is wrong."""

    pairs: tuple[tuple[str, str], ...] = ()
    filters: DeadLetterFilter = field(default_factory=DeadLetterFilter)
    problem: str | None = None

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def value(self, name: str) -> str:
        found = self.values(name)
        return found[0] if found else ""

    @property
    def query_string(self) -> str:
        return urlencode(self.pairs)

    def describe(self) -> str:
        return self.filters.describe()


def parse_selection(items: Iterable[tuple[str, str]]) -> SelectionQuery:
    """The filters of ``items`` (a query string's or a form's pairs); empty values are ignored."""
    pairs = tuple(
        (key, value.strip())
        for key, value in items
        if key in (*MULTI_FIELDS, *TIME_FIELDS) and value.strip()
    )
    query = SelectionQuery(pairs)
    try:
        statuses = [int(status) for status in query.values("status")]
    except ValueError:
        return SelectionQuery(pairs, problem="status must be an HTTP status, like 404")
    try:
        filters = DeadLetterFilter.build(
            reasons=query.values("reason"),
            statuses=statuses,
            tenants=query.values("tenant"),
            customers=query.values("customer"),
            event_ids=query.values("event_id"),
            since=query.value("since") or None,
            until=query.value("until") or None,
        )
    except ValueError as exc:
        return SelectionQuery(pairs, problem=str(exc))
    return SelectionQuery(pairs, filters)
