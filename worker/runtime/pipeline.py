"""The first-attempt pipeline: its stages, their threads, the hand-offs between them, and their
supervision.

```
 Celery's event loop    gate thread           caller thread (asyncio)  settler thread
 ───────────────────    ───────────           ───────────────────────  ──────────────
 EventIntake            Gate.run              Caller.run: N lanes      Settler.run
  validate, prepare ─put─> take relationships ─put─> fence, PATCH ─put─> leave relationships,
                          in one round trip     (one connection       conclude: applied, stale,
                          │                      per lane)            retry, dead letter
                          └─ busy, outage, ledger down ──────────put─>      │
 ack or requeue <─── Pipeline.acknowledge <─── InFlightMessages <──────────┘
  (in the loop: the channel's thread)           (finished, then on_settled asks the loop)
```

A first attempt's ``Call`` is in one thread's hands at a time; each ``put`` (a queue) hands it
over, with everything written before it. Who writes what:

- the intake (Celery's event loop) makes it: ``attempt``, ``relationship``, ``delivery_count``,
  ``outage``, ``trial`` and ``trace``;
- the gate: ``hold``, or ``failure`` (ledger down, relationship busy);
- the caller: ``verdict``, ``duration``, ``outage``, ``failure``, and the hold's record (it
  waits for the tenant's API rate budget, when one applies, before the fence);
- the settler: ``hold`` (left), ``attempt`` (a lock to inherit), ``failure``; then it concludes.

Supervision. Each stage runs in a thread of its own and beats a heartbeat every round (at least
once a second while idle). A stage that has not gone round for ``CCSYNC_LIVENESS_SECONDS`` is
stalled: waiting on the broker (its confirms are bounded, but a memory alarm can outlast many of
them), on Redis, or stuck on a bug. The supervisor logs the stall and its end,
``ccsync_stage_beat_age_seconds`` shows it, and /livez fails while it lasts. A stage whose thread
ends (an exception escaped it: a bug) stops the worker at once with exit status
``EXIT_STAGE_DIED``: its messages are unacknowledged, so the broker delivers them again, and the
orchestrator restarts the worker. Limping on would leave them counted in flight for ever, and
every redelivered message waiting to run alone behind them.

Presence. A fourth stage renews the worker's presence record in Redis
(``worker.processing.ledger.presence``); the locks the gate takes name it, and the caller cuts
every call when the record may have expired, so that another worker finding the record gone may
take those locks over (docs/flow.md, "A worker that dies").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import sentry_sdk
from kombu.message import Message

from worker.cloudcockpit.connection import AsyncConnection
from worker.observability import metrics
from worker.observability.endpoints import Liveness, LoopHeartbeat
from worker.processing.applier import Applier
from worker.processing.attempts import Call
from worker.runtime.caller import Caller
from worker.runtime.gate import Gate
from worker.runtime.settler import InFlightMessages, Settler

log = logging.getLogger(__name__)

#: Exit status of a worker one of whose stages died (EX_SOFTWARE: an internal error).
EXIT_STAGE_DIED = 70
#: Seconds between two looks of the supervisor at the stages' heartbeats.
SUPERVISOR_SECONDS = 1.0
#: Seconds the error report of a dying stage may take to reach Sentry before the worker exits.
SENTRY_FLUSH_SECONDS = 2.0

#: What a stage's thread runs: its loop, for ever, beating once a round.
StageLoop = Callable[[Callable[[], None]], None]
#: Told that stage ``name`` died, with what escaped it (None: its loop returned).
FaultHandler = Callable[[str, BaseException | None], None]


def exit_worker(stage: str, error: BaseException | None) -> None:
    """The default ``FaultHandler``: says why, then ends the process at once, without acking."""
    log.critical(
        "the %s stage died (%r): stopping the worker with exit status %d; its unacknowledged "
        "messages are delivered again",
        stage,
        error,
        EXIT_STAGE_DIED,
        exc_info=error,
    )
    if sentry_sdk.is_initialized():
        sentry_sdk.flush(timeout=SENTRY_FLUSH_SECONDS)
    logging.shutdown()
    os._exit(EXIT_STAGE_DIED)


class Pipeline:
    """Gate, caller and settler, each in a supervised thread of its own, from ``put`` to the
    messages ``acknowledge`` acks.

    ``on_settled`` is called from a stage's thread whenever messages are ready to be acked or
    requeued: it asks the event loop to call ``acknowledge``. Each stage's heartbeat joins
    ``liveness`` and is stalled past ``stall_seconds``. ``on_fault`` is told when a stage died
    (by default: ``exit_worker``).
    """

    def __init__(
        self,
        *,
        applier: Applier,
        lanes: int,
        make_connection: Callable[[], AsyncConnection],
        on_settled: Callable[[], None],
        liveness: Liveness,
        stall_seconds: float,
        on_fault: FaultHandler = exit_worker,
    ) -> None:
        self._in_flight = InFlightMessages()
        self._on_settled = on_settled
        self._on_fault = on_fault
        settler = Settler(applier=applier, in_flight=self._in_flight, on_settled=on_settled)
        caller = Caller(
            applier=applier,
            lanes=lanes,
            make_connection=make_connection,
            on_called=settler.put,
            on_lost=self._lost,
        )
        self._gate = Gate(
            ledger=applier.ledger,
            on_held=caller.put,
            on_decided=settler.put,
            on_lost=self._lost,
            backlog=caller.backlog,
        )
        stages: dict[str, StageLoop] = {
            "gate": self._gate.run,
            "caller": caller.run,
            "settler": settler.run,
        }
        if applier.ledger.presence is not None:
            stages["presence"] = applier.ledger.presence.run
        self._heartbeats = {
            name: LoopHeartbeat(stall_seconds, name=f"{name} stage") for name in stages
        }
        for name, run in stages.items():
            heartbeat = self._heartbeats[name]
            liveness.watch(heartbeat)
            metrics.STAGE_BEAT_AGE_SECONDS.labels(name).set(0)
            threading.Thread(
                target=self._supervised, args=(name, run), name=f"ccsync-{name}", daemon=True
            ).start()
        threading.Thread(target=self._watch_stalls, name="ccsync-supervisor", daemon=True).start()

    def put(self, call: Call, message: Message) -> None:
        """From the event loop: a validated first attempt and its message, to be settled."""
        self._in_flight.started()
        self._gate.put(call, message)

    def acknowledge(
        self, connection_errors: tuple[type[BaseException], ...]
    ) -> list[tuple[Message, bool]]:
        """In the event loop (the channel's thread): acks or requeues every message settled so
        far; returns each with whether it was acked."""
        return self._in_flight.settle(connection_errors)

    def wait_idle(self, timeout: float) -> bool:
        """Whether nothing is in flight, waiting up to ``timeout`` seconds for it."""
        return self._in_flight.wait_idle(timeout)

    def _lost(self, call: Call, message: Message) -> None:
        """A stage failed on ``call`` (a bug, logged where it happened): the call ends without
        an outcome (a trial it was ends with it), and its message goes back to the queue, which
        counts the delivery."""
        call.abandon()
        self._in_flight.finished(message, ack=False)
        self._on_settled()

    def _supervised(self, name: str, run: StageLoop) -> None:
        error: BaseException | None = None
        try:
            run(self._heartbeats[name].beat)
        except BaseException as exc:
            error = exc
        self._on_fault(name, error)

    def _watch_stalls(self) -> None:
        stalled: set[str] = set()
        while True:
            time.sleep(SUPERVISOR_SECONDS)
            for name, heartbeat in self._heartbeats.items():
                # Set (not a function of the gauge): a multiprocess parent reads set values only.
                metrics.STAGE_BEAT_AGE_SECONDS.labels(name).set(heartbeat.age())
                answer = heartbeat.check()
                if not answer.ok and name not in stalled:
                    stalled.add(name)
                    log.error("stalled: %s; /livez fails until it moves again", answer.text)
                elif answer.ok and name in stalled:
                    stalled.discard(name)
                    log.warning("the %s stage moves again: %s", name, answer.text)
