"""Purge: what the operator's purge reports (``stored_replay.purge_stored`` does it).

For what was examined and will never be replayed: the invalid event a producer has since fixed
and re-sent, a customer deleted on purpose. A purged dead letter stays in the store as history for
the retention period; export first when the record may be wanted longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PurgeReport:
    examined: int = 0
    matched: int = 0
    purged: int = 0
    dry_run: bool = False
    event_ids: list[str | None] = field(default_factory=list)
