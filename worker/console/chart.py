"""Dead letters over time by reason, as the shapes of a stacked bar chart (inline SVG).

Drawn on the server: no script, no CDN, nothing for a hostile header to inject into (the only
text is the reason names, the counts and the times, escaped by the template).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from worker.constants import (
    REASON_API_REJECTED,
    REASON_DELIVERY_LIMIT,
    REASON_INVALID_EVENT,
    REASON_RETRIES_EXHAUSTED,
)

#: The reasons in the order they are stacked, each with its CSS class; anything else is "other".
REASONS: Final = (
    REASON_API_REJECTED,
    REASON_RETRIES_EXHAUSTED,
    REASON_INVALID_EVENT,
    REASON_DELIVERY_LIMIT,
)
OTHER: Final = "other"
#: Bars at most: readable on a laptop screen.
MAX_BUCKETS: Final = 24
#: Bucket widths tried, the smallest first: the chart takes the first that fits MAX_BUCKETS.
STEPS: Final = tuple(
    timedelta(minutes=minutes)
    for minutes in (1, 5, 15, 60, 3 * 60, 6 * 60, 12 * 60, 24 * 60, 7 * 24 * 60, 30 * 24 * 60)
)
WIDTH: Final = 720
HEIGHT: Final = 180
#: Room below the bars for the time labels, and left of them for the count scale.
BOTTOM: Final = 22
LEFT: Final = 34
EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    reason: str
    count: int
    start: datetime


@dataclass(frozen=True)
class Label:
    x: float
    text: str


@dataclass
class Chart:
    bars: list[Bar] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    peak: int = 0
    step: timedelta = STEPS[0]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = BOTTOM
    undated: int = 0

    @property
    def empty(self) -> bool:
        return not self.bars


def _floor(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + ((moment - EPOCH) // step) * step


def _label(moment: datetime, step: timedelta) -> str:
    return moment.strftime("%m-%d" if step >= timedelta(days=1) else "%H:%M")


def build_chart(points: Iterable[tuple[str | None, datetime | None]]) -> Chart:
    """A chart of (reason, dead-lettered at) pairs; those without a time are only counted."""
    return build_counted_chart((reason, moment, 1) for reason, moment in points)


def build_counted_chart(rows: Iterable[tuple[str | None, datetime | None, int]]) -> Chart:
    """A chart of (reason, dead-lettered at, how many) rows, as the store aggregates them."""
    dated: list[tuple[str, datetime, int]] = []
    undated = 0
    for reason, moment, count in rows:
        if moment is None:
            undated += count
        else:
            dated.append((reason if reason in REASONS else OTHER, moment.astimezone(UTC), count))
    if not dated:
        return Chart(undated=undated)
    oldest = min(moment for _, moment, _ in dated)
    newest = max(moment for _, moment, _ in dated)
    step = next(
        (s for s in STEPS if (_floor(newest, s) - _floor(oldest, s)) // s < MAX_BUCKETS), STEPS[-1]
    )
    start = _floor(oldest, step)
    buckets = (_floor(newest, step) - start) // step + 1
    counts: dict[tuple[int, str], int] = {}
    for reason, moment, count in dated:
        key = ((_floor(moment, step) - start) // step, reason)
        counts[key] = counts.get(key, 0) + count
    totals = [sum(c for (b, _), c in counts.items() if b == bucket) for bucket in range(buckets)]
    peak = max(totals)
    plot_width, plot_height = WIDTH - LEFT, HEIGHT - BOTTOM
    slot = plot_width / buckets
    reasons = [r for r in (*REASONS, OTHER) if any(k[1] == r for k in counts)]
    chart = Chart(reasons=reasons, peak=peak, step=step, undated=undated)
    for bucket in range(buckets):
        top = float(plot_height)
        for reason in reasons:
            count = counts.get((bucket, reason), 0)
            if not count:
                continue
            height = plot_height * count / peak
            top -= height
            chart.bars.append(
                Bar(
                    x=round(LEFT + bucket * slot + slot * 0.1, 1),
                    y=round(top, 1),
                    width=round(slot * 0.8, 1),
                    height=round(height, 1),
                    reason=reason,
                    count=count,
                    start=start + bucket * step,
                )
            )
    every = max(1, buckets // 6)
    chart.labels = [
        Label(round(LEFT + (bucket + 0.5) * slot, 1), _label(start + bucket * step, step))
        for bucket in range(0, buckets, every)
    ]
    return chart
