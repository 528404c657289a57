"""A reply's text, from a chat worker thread to the screen, in batches of about 20 a second.

A model on a GPU writes hundreds of tokens a second; one Textual message per token would flood
the message queue and re-render the Markdown of the reply for every token. The worker hands
each piece to a :class:`DeltaBatcher`, which keeps the text that arrived since its last post
and posts it as one :class:`ReplyStreamed` at most every ``interval_seconds`` (50 ms). What is
pending when the reply ends is posted by :meth:`DeltaBatcher.flush`, before the worker posts
the reply's end, so the screen sees the text complete and in order.

Text that waits is posted with the next piece once the interval is up; a model slower than
20 tokens a second therefore posts each token as it comes, and a fast one never makes the
text wait longer than one token's time beyond the interval. The batcher only calls ``post``
(``MessagePump.post_message``, which is thread-safe): it never touches a widget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from textual.message import Message

STREAM_INTERVAL_SECONDS = 0.05
"""Twenty posts a second: smooth to read, cheap to render."""


class ReplyStreamed(Message):
    """New text of the reply being written by ``slot``'s job ``job_id``.

    ``pieces`` counts the pieces (about one per token) since the reply started, ``first_s``
    is when the first one came (seconds after sending, None before), ``elapsed_s`` the time
    since sending: the screen shows a live tokens/s from them."""

    bubble = False  # the screen's business only

    def __init__(
        self,
        slot: str,
        job_id: int,
        text: str,
        *,
        pieces: int,
        first_s: float | None,
        elapsed_s: float,
    ) -> None:
        super().__init__()
        self.slot = slot
        self.job_id = job_id
        self.text = text
        self.pieces = pieces
        self.first_s = first_s
        self.elapsed_s = elapsed_s


class DeltaBatcher:
    """Collects reply text in a worker thread and posts it in batches (module docstring).

    Args:
        post: Where messages go, usually the screen's ``post_message``.
        slot: Which side of the chat the reply belongs to (stamped on every message).
        job_id: Which reply (stale replies are ignored by the screen).
        interval_seconds: The least time between two posts.
        clock: A monotonic clock in seconds; tests pass a fake one.
    """

    def __init__(
        self,
        post: Callable[[Message], object],
        slot: str,
        job_id: int,
        *,
        interval_seconds: float = STREAM_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._post = post
        self.slot = slot
        self.job_id = job_id
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._started = clock()
        self._first: float | None = None
        self._last_post: float | None = None
        self.pieces = 0
        """Pieces received so far."""
        self.posts = 0
        """Messages posted so far (for tests and benchmarks)."""

    def add(self, text: str) -> None:
        """One piece of the reply (posted now, or with a later piece, or by :meth:`flush`)."""
        if not text:
            return
        with self._lock:
            now = self._clock()
            if self._first is None:
                self._first = now - self._started
            self.pieces += 1
            self._pending.append(text)
            if self._last_post is None or now - self._last_post >= self.interval_seconds:
                self._flush_locked(now)

    def flush(self) -> None:
        """Post what is pending now (at the end of the reply, or before a notice)."""
        with self._lock:
            self._flush_locked(self._clock())

    def _flush_locked(self, now: float) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._post(
            ReplyStreamed(
                self.slot,
                self.job_id,
                text,
                pieces=self.pieces,
                first_s=self._first,
                elapsed_s=now - self._started,
            )
        )
        self._last_post = now
        self.posts += 1
