"""``ccsync ingest``: events over HTTP for producers that cannot speak AMQP (contract section 6).

``POST /v1/events`` takes one event (native JSON, or a CloudEvent in the HTTP binding: structured,
binary or batched), authenticates it (``authentication``), validates every event of the request
with the intake's own decoder (``decoding``) and publishes each to ``customer-events`` exactly as
an AMQP producer would, answering 202 only once the broker confirmed them all (``publishing``).
The app itself is in ``app``. Nothing here imports the worker's runtime.
"""

from __future__ import annotations

from worker.ingest.app import create_app, run_ingest

__all__ = ["create_app", "run_ingest"]
