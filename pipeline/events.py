"""Events that long jobs emit.

Every long job has one shape: ``job(..., *, on_event, should_stop) -> result``. The job calls
``on_event(event)`` with the frozen dataclasses below and polls ``should_stop()`` often (at
least every few thousand rows, or every step); when it returns True the job stops cleanly,
keeps what it has written consistent, and raises :class:`pipeline.errors.JobCancelled`.

The CLI passes a printer, the TUI a bridge that batches events into Textual messages, and
tests a ``list.append``. Nothing here imports anything heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Progress:
    """A long job advanced. ``total`` is None when unknown (e.g. a stream of unknown length)."""

    stage: str
    """Short label of what is being done, e.g. "validate", "tokenize", "dedup"."""
    done: int
    total: int | None
    unit: str = "rows"
    """What ``done`` and ``total`` count: "rows", "bytes", "files", "tokens"."""


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line worth showing to the user in a log pane."""

    message: str
    level: str = "info"
    """"info", "warning" or "error"."""


@dataclass(frozen=True, slots=True)
class StageDone:
    """A named stage of a job has finished; ``summary`` is one human-readable line."""

    stage: str
    summary: str
    seconds: float


Event = Progress | LogLine | StageDone
EventSink = Callable[[Event], None]
StopCheck = Callable[[], bool]


def ignore_event(event: Event) -> None:
    """The default sink: drop the event."""


def never_stop() -> bool:
    """The default stop check: never ask to stop."""
    return False
