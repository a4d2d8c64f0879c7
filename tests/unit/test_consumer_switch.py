"""The consumer switch composes its holds: the outage guard's and an operator's pause (issue 17).

The event loop is stood in for by a hub that runs each change at once, and the consumers by
recorders: what is checked is which of ``consume``/``cancel`` the switch asks for, and when.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.runtime.consumer_switch import OPERATOR, OUTAGE, ConsumerSwitch


class Hub:
    def call_soon(self, change: Callable[[], None]) -> None:
        change()


@dataclass
class Recorder:
    calls: list[str] = field(default_factory=list)

    def consume(self) -> None:
        self.calls.append("consume")

    def cancel(self) -> None:
        self.calls.append("cancel")


@dataclass
class CeleryConsumer:
    task_consumer: Recorder
    hub: Hub = field(default_factory=Hub)


def switch_with(intake: Recorder, tasks: Recorder) -> ConsumerSwitch:
    switch = ConsumerSwitch()
    switch.attach(CeleryConsumer(tasks), [intake])
    return switch


def test_given_a_pause_when_an_outage_opens_and_closes_then_consumption_stays_paused() -> None:
    intake, tasks = Recorder(), Recorder()
    switch = switch_with(intake, tasks)

    switch.pause(OPERATOR)
    switch.pause(OUTAGE)
    switch.resume(OUTAGE)

    assert switch.paused and switch.holds == {OPERATOR}
    assert intake.calls == tasks.calls == ["cancel"]

    switch.resume(OPERATOR)

    assert not switch.paused
    assert intake.calls == tasks.calls == ["cancel", "consume"]


def test_given_an_outage_when_resumed_by_the_operator_then_consumption_waits_for_the_guard() -> (
    None
):
    intake, tasks = Recorder(), Recorder()
    switch = switch_with(intake, tasks)

    switch.pause(OUTAGE)
    switch.pause(OPERATOR)
    switch.resume(OPERATOR)

    assert switch.holds == {OUTAGE}
    assert intake.calls == tasks.calls == ["cancel"]

    switch.resume(OUTAGE)

    assert intake.calls == tasks.calls == ["cancel", "consume"]


def test_given_no_hold_when_resumed_then_nothing_is_asked_of_the_consumers() -> None:
    intake, tasks = Recorder(), Recorder()
    switch = switch_with(intake, tasks)

    switch.resume(OPERATOR)
    switch.resume(OUTAGE)

    assert intake.calls == tasks.calls == []


def test_given_a_hold_before_the_worker_runs_when_it_attaches_then_its_consumers_cancel() -> None:
    intake, tasks = Recorder(), Recorder()
    switch = ConsumerSwitch()

    switch.pause(OPERATOR)
    switch.attach(CeleryConsumer(tasks), [intake])

    assert intake.calls == tasks.calls == ["cancel"]
