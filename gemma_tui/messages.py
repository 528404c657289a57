"""Textual messages that carry pipeline events from worker threads to screens.

A job running in a ``@work(thread=True)`` worker reports through
:class:`gemma_tui.bridge.EventBridge`, which turns the pipeline's events
(:mod:`pipeline.events`) into the three messages below. Names are past-tense facts.

* :class:`JobProgressed` is *status*: only the newest one matters, so it may replace an
  older one still waiting in the queue (``can_replace``), like toolong's ``SizeChanged``.
* :class:`JobEventsBatched` carries every other event since the last post, in order (log
  lines now, plot points later): never coalesced, never dropped.
* :class:`JobMilestoneReached` is a milestone (a stage finished): posted at once, after
  flushing what was pending, never dropped.

Every message names its job (``job_id``), so a screen can ignore a cancelled job's last
words arriving after a new job has started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from pipeline.events import Event, Progress, StageDone


class JobProgressed(Message):
    """A job advanced; the newest of these replaces older ones still queued."""

    def __init__(self, job_id: int, progress: Progress) -> None:
        super().__init__()
        self.job_id = job_id
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgressed) and message.job_id == self.job_id


class JobEventsBatched(Message):
    """Every non-status, non-milestone event a job emitted since the last post, in order."""

    def __init__(self, job_id: int, events: tuple[Event, ...]) -> None:
        super().__init__()
        self.job_id = job_id
        self.events = events


class JobMilestoneReached(Message):
    """A job finished a stage (posted at once, never coalesced)."""

    def __init__(self, job_id: int, event: StageDone) -> None:
        super().__init__()
        self.job_id = job_id
        self.event = event
