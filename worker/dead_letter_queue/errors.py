"""The one error of the dead-letter tools (a module of its own: reading and publishing raise it)."""

from __future__ import annotations

from worker.exceptions import CcsyncError


class DeadLetterError(CcsyncError):
    """An operation on dead letters could not be done; what was not done stays in the queue."""
