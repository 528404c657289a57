"""The event bridge: pipeline events from a worker thread -> few, complete Textual messages."""

from __future__ import annotations

import threading

from textual import work
from textual.app import App, ComposeResult
from textual.message import Message
from textual.widgets import Static
from textual.worker import get_current_worker

from gemma_tui.bridge import EventBridge
from gemma_tui.messages import JobEventsBatched, JobMilestoneReached, JobProgressed
from pipeline.events import Event, LogLine, Progress, StageDone


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scripted_events(rows: int = 10_000) -> list[Event]:
    """A validate-like job: progress every row, a log line every 100, two stages."""
    events: list[Event] = []
    for stage in ("read", "validate"):
        for done in range(1, rows + 1):
            events.append(Progress(stage, done, rows))
            if done % 100 == 0:
                events.append(LogLine(f"{stage} checkpoint {done}"))
        events.append(StageDone(stage, f"{rows} rows", 1.0))
    return events


def delivered(messages: list[Message]) -> tuple[list[Event], list[Progress], list[StageDone]]:
    batched: list[Event] = []
    progress: list[Progress] = []
    milestones: list[StageDone] = []
    for message in messages:
        if isinstance(message, JobEventsBatched):
            batched.extend(message.events)
        elif isinstance(message, JobProgressed):
            progress.append(message.progress)
        elif isinstance(message, JobMilestoneReached):
            milestones.append(message.event)
    return batched, progress, milestones


def test_bridge_batches_without_losing_points() -> None:
    clock = FakeClock()
    posted: list[Message] = []
    bridge = EventBridge(
        posted.append, job_id=7, interval_seconds=0.25, clock=clock, flush_later=False
    )
    events = scripted_events()
    for event in events:
        clock.now += 0.0005  # 2,000 events a second: 20 s for 40,000 events
        bridge(event)
    bridge.close()

    batched, progress, milestones = delivered(posted)
    # Every log line arrives, once, in order.
    assert batched == [e for e in events if isinstance(e, LogLine)]
    # Milestones are never dropped, and each comes after every log line emitted before it.
    assert milestones == [e for e in events if isinstance(e, StageDone)]
    order = [m for m in posted if isinstance(m, JobEventsBatched | JobMilestoneReached)]
    logs_seen = 0
    for message in order:
        if isinstance(message, JobEventsBatched):
            logs_seen += len(message.events)
        else:
            expected = 100 if message.event.stage == "read" else 200
            assert logs_seen == expected
    # Status is coalesced: the final state of each stage is delivered.
    assert progress[-1] == Progress("validate", 10_000, 10_000)
    assert Progress("read", 10_000, 10_000) in progress
    # Few posts: about 4 a second (x2 kinds) over ~20 simulated seconds, not 40,000.
    assert len(posted) == bridge.posts
    assert bridge.posts < 2 * (20 / 0.25) + 10
    assert all(m.job_id == 7 for m in posted if isinstance(m, JobProgressed))


def test_bridge_posts_first_progress_at_once_and_flushes_on_close() -> None:
    clock = FakeClock()
    posted: list[Message] = []
    bridge = EventBridge(posted.append, job_id=1, clock=clock, flush_later=False)
    bridge(Progress("open", 1, None, "bytes"))
    assert len(posted) == 1  # the bar appears at once
    bridge(Progress("open", 2, None, "bytes"))
    bridge(LogLine("still going"))
    assert len(posted) == 1  # held until the interval passes
    bridge.close()
    _, progress, _ = delivered(posted)
    assert progress[-1] == Progress("open", 2, None, "bytes")
    assert isinstance(posted[-2], JobEventsBatched)


class BridgeApp(App[None]):
    """Runs a scripted job in a thread worker and counts what reaches the UI."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events
        self.logs: list[Event] = []
        self.progress_updates = 0
        self.last_progress: Progress | None = None
        self.milestones: list[StageDone] = []

    def compose(self) -> ComposeResult:
        yield Static(id="status")

    def on_mount(self) -> None:
        self.emit()

    @work(thread=True, exit_on_error=False, group="job")
    def emit(self) -> None:
        assert threading.current_thread() is not threading.main_thread()
        worker = get_current_worker()
        bridge = EventBridge(self.post_message, job_id=1)
        try:
            for event in self.events:
                if worker.is_cancelled:
                    return
                bridge(event)
        finally:
            bridge.close()

    def on_job_progressed(self, message: JobProgressed) -> None:
        self.progress_updates += 1
        self.last_progress = message.progress
        self.query_one("#status", Static).update(f"{message.progress.done}")

    def on_job_events_batched(self, message: JobEventsBatched) -> None:
        self.logs.extend(message.events)

    def on_job_milestone_reached(self, message: JobMilestoneReached) -> None:
        self.milestones.append(message.event)


async def test_bridge_from_a_worker_thread_reaches_the_ui_complete_and_coalesced() -> None:
    events = scripted_events(50_000)
    app = BridgeApp(events)
    async with app.run_test() as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.logs == [e for e in events if isinstance(e, LogLine)]
        assert app.milestones == [e for e in events if isinstance(e, StageDone)]
        assert app.last_progress == Progress("validate", 50_000, 50_000)
        # 100,000 progress events became a handful of UI updates.
        assert app.progress_updates < 100
        assert str(app.query_one("#status", Static).render()) == "50000"


def test_a_pending_event_is_posted_when_the_interval_is_up_without_a_new_event() -> None:
    """A step just after a post waits at most one interval, not until the next step."""
    import threading

    from gemma_tui.messages import JobEventsBatched
    from pipeline.events import LogLine

    posted: list[object] = []
    arrived = threading.Event()

    def post(message: object) -> None:
        posted.append(message)
        if len(posted) == 2:
            arrived.set()

    bridge = EventBridge(post, job_id=3, interval_seconds=0.05)
    bridge(LogLine("first"))  # posted at once
    bridge(LogLine("second"))  # within the interval: waits
    assert len(posted) == 1
    assert arrived.wait(2.0), "the pending event was never posted"
    second = posted[1]
    assert isinstance(second, JobEventsBatched)
    assert [e.message for e in second.events] == ["second"]  # type: ignore[union-attr]
    bridge.close()
    assert len(posted) == 2
