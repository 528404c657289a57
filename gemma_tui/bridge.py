"""Pipeline events -> Textual messages, batched a few times a second.

A pipeline job calls ``on_event`` from its worker thread, possibly thousands of times a
second. Posting one message per event would flood the message queue and redraw the screen
for every row, so :class:`EventBridge` (the ``on_event`` the TUI passes) keeps what arrived
since its last post and posts at most every ``interval_seconds``:

* :class:`~pipeline.events.Progress` is status: only the newest is kept and posted as
  :class:`~gemma_tui.messages.JobProgressed`;
* :class:`~pipeline.events.StageDone` is a milestone: it flushes what is pending and is
  posted at once as :class:`~gemma_tui.messages.JobMilestoneReached`;
* every other event (log lines, and later plot points) is appended to a batch and posted, in
  order and complete, as :class:`~gemma_tui.messages.JobEventsBatched`.

What waits is posted when the interval is up even if no new event comes (a timer thread),
so the last step before a long eval shows at once. :meth:`EventBridge.close` flushes what is
left; the worker calls it when the job ends, so nothing is lost. The bridge only calls
``post`` (``MessagePump.post_message``, which is thread-safe): it never touches a widget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from textual.message import Message

from gemma_tui.messages import JobEventsBatched, JobMilestoneReached, JobProgressed
from pipeline.events import Event, Progress, StageDone

DEFAULT_INTERVAL_SECONDS = 0.25
"""Four posts a second: smooth enough for a progress bar, cheap enough for the UI."""


class EventBridge:
    """An ``on_event`` sink that posts batched Textual messages (see the module docstring).

    Args:
        post: Where messages go, usually a screen's ``post_message``.
        job_id: Stamped on every message so stale jobs can be ignored.
        interval_seconds: The least time between two posts (milestones excepted).
        clock: A monotonic clock in seconds; tests pass a fake one.
        flush_later: Post what is pending once the interval is up even when no new event
            comes (a timer thread); tests with a fake clock turn it off.
    """

    def __init__(
        self,
        post: Callable[[Message], object],
        job_id: int,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        flush_later: bool = True,
    ) -> None:
        self._post = post
        self.job_id = job_id
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._batch: list[Event] = []
        self._last_post: float | None = None
        self._timer: threading.Timer | None = None
        self.flush_later = flush_later
        self.posts = 0
        """How many messages this bridge has posted (for tests and benchmarks)."""

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, StageDone):
                self._flush_locked()
                self._send(JobMilestoneReached(self.job_id, event))
                return
            if isinstance(event, Progress):
                self._progress = event
            else:
                self._batch.append(event)
            now = self._clock()
            if self._last_post is None or now - self._last_post >= self.interval_seconds:
                self._flush_locked()
            elif self._timer is None and self.flush_later:
                # nothing may come for a while (a long step, an eval): post what waits
                # when the interval is up rather than with the next event
                delay = self.interval_seconds - (now - self._last_post)
                self._timer = threading.Timer(max(0.0, delay), self._timer_flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Post whatever is pending now."""
        with self._lock:
            self._flush_locked()

    def _timer_flush(self) -> None:
        with self._lock:
            self._timer = None
            self._flush_locked()

    def close(self) -> None:
        """Flush at the end of a job (also when it failed or was cancelled)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._batch:
            self._send(JobEventsBatched(self.job_id, tuple(self._batch)))
            self._batch.clear()
        if self._progress is not None:
            self._send(JobProgressed(self.job_id, self._progress))
            self._progress = None

    def _send(self, message: Message) -> None:
        self._post(message)
        self.posts += 1
        self._last_post = self._clock()
