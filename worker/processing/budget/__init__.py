"""The API's rate budget per tenant, shared by every worker of the fleet through Redis.

CloudCockpit limits calls per tenant and answers 429 beyond. With ``CCSYNC_API_RATE_LIMIT`` (calls
a second per tenant) each call reserves its slot before it is made: one script call
(``reserve.lua``, a GCRA) checks and reserves for every call a worker is about to make, and says
how long each must wait; the fleet's calls of a tenant are spaced by Redis's clock, with no
central process, at ``RATE_HEADROOM`` of the rate (calls spaced evenly arrive bunched). The wait
comes before the fence of the call's lock, so waiting spends no attempt and no part of the call's
lease; a wait longer than ``LONGEST_WAIT_SECONDS`` is not reserved: the event is deferred
(``RateLimited``, no attempt spent). A 429 all the same holds the tenant's calls for its
``Retry-After``, fleet-wide, as below.

Without the setting, calls of a tenant cost no Redis round trip until the API refuses one: a
429 (``refused.lua``) makes the tenant's next call due no sooner than its ``Retry-After``,
fleet-wide, and from then on its calls reserve their slots at a rate learned from the 429s (what
the worker saw answered in the second before, then less after each later pause, and a little more
after each second without one), for ``LEARNED_RATE_SECONDS`` after the last 429. The worker that
got the 429 holds the tenant's calls at once; the others learn of it within ``POLL_SECONDS``.
After a pause one call goes first and the next an interval later: no storm.

Everything is imported from the package itself.
"""

from __future__ import annotations

from worker.processing.budget.store import (
    LEARNED_RATE_SECONDS,
    LONGEST_WAIT_SECONDS,
    POLL_SECONDS,
    RATE_HEADROOM,
    RateBudget,
    Reservation,
)

__all__ = [
    "LEARNED_RATE_SECONDS",
    "LONGEST_WAIT_SECONDS",
    "POLL_SECONDS",
    "RATE_HEADROOM",
    "RateBudget",
    "Reservation",
]
