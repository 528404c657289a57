"""A base for mode screens that run pipeline jobs: one at a time, in a thread, cancellable.

The pattern every stage screen shares (Dataset now; Train, Export later):

* :meth:`JobScreen.start_job` registers the job and shows the screen's :class:`JobBar`; the
  caller then starts a ``@work(thread=True, exit_on_error=False, group="job")`` method of the
  screen and stores its worker in ``job.worker``;
* inside that worker, :meth:`JobScreen.run_job` calls the pipeline with an
  :class:`~gemma_tui.bridge.EventBridge` as ``on_event`` and ``worker.is_cancelled`` as
  ``should_stop``; the bridge's messages update the job bar (stale jobs are ignored);
* Escape cancels; when the worker ends, :meth:`JobScreen.job_succeeded` gets the result, a
  :class:`~pipeline.errors.PipelineError` becomes an error modal, a cancellation a notice.

The screen is a mode's base screen, so it stays mounted and its workers are never cancelled
by a modal closing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from textual import on
from textual.screen import Screen
from textual.worker import Worker, WorkerState, get_current_worker

from gemma_tui.bridge import EventBridge
from gemma_tui.messages import JobEventsBatched, JobMilestoneReached, JobProgressed
from gemma_tui.screens.modals import ErrorModal
from gemma_tui.widgets.job_bar import JobBar

if TYPE_CHECKING:
    from gemma_tui.screens.help import HelpSection

T = TypeVar("T")

JOB_GROUP = "job"
"""The worker group of jobs (other groups, e.g. quick reads, are the subclass's business)."""


@dataclass(slots=True)
class RunningJob:
    job_id: int
    kind: str
    title: str
    worker: Worker[Any] | None = None


class JobScreen(Screen[None]):
    """A screen with a :class:`JobBar` (any id) that runs one job at a time."""

    JOB_HINT = "esc cancel"
    """What the job bar says about stopping the job."""

    def __init__(self) -> None:
        super().__init__()
        self.job: RunningJob | None = None
        self._job_counter = 0

    @property
    def busy(self) -> bool:
        """A job is running (the app asks before quitting)."""
        return self.job is not None

    def help_sections(self) -> list[HelpSection]:
        """Key sections this screen adds to the help screen."""
        return []

    # ---- starting and running

    def say_busy(self) -> bool:
        """True (after telling the user) when a job is already running."""
        if self.job is None:
            return False
        self.notify(f"{self.job.title} is running; press esc to cancel it.", severity="warning")
        return True

    def start_job(self, kind: str, title: str) -> RunningJob | None:
        """Register a job and show the job bar; None (and a notice) if one is running."""
        if self.say_busy():
            return None
        self._job_counter += 1
        self.job = RunningJob(self._job_counter, kind, title)
        self.query_one(JobBar).start(title, hint=self.JOB_HINT)
        self.refresh_bindings()
        return self.job

    def run_job(self, job_id: int, body: Callable[..., T]) -> T:
        """In the worker thread: ``body(on_event=bridge, should_stop=...)``, then flush."""
        worker = get_current_worker()
        bridge = EventBridge(self.post_message, job_id)
        try:
            return body(on_event=bridge, should_stop=lambda: worker.is_cancelled)
        finally:
            bridge.close()

    def action_cancel_job(self) -> None:
        if self.job is not None and self.job.worker is not None:
            self.query_one(JobBar).show_detail("cancelling…")
            self.job.worker.cancel()

    def job_succeeded(self, kind: str, title: str, result: Any) -> None:
        """Show a finished job's result; subclasses override."""
        self.notify(str(result), title=f"{title}: done")

    # ---- what the worker reports

    def _is_current(self, job_id: int) -> bool:
        return self.job is not None and self.job.job_id == job_id

    @on(JobProgressed)
    def _job_progressed(self, message: JobProgressed) -> None:
        if self._is_current(message.job_id):
            self.query_one(JobBar).show_progress(message.progress)

    @on(JobEventsBatched)
    def _job_events(self, message: JobEventsBatched) -> None:
        from pipeline.events import LogLine

        if not self._is_current(message.job_id):
            return
        for event in message.events:
            if isinstance(event, LogLine):
                self.query_one(JobBar).show_detail(event.message)
                if event.level in ("warning", "error"):
                    self.notify(event.message, severity=event.level)

    @on(JobMilestoneReached)
    def _job_milestone(self, message: JobMilestoneReached) -> None:
        if self._is_current(message.job_id):
            self.query_one(JobBar).show_detail(f"{message.event.stage}: {message.event.summary}")

    def _finish_job(self) -> RunningJob | None:
        job, self.job = self.job, None
        self.query_one(JobBar).stop()
        self.refresh_bindings()
        return job

    @on(Worker.StateChanged)
    def _job_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        job = self.job
        if worker.group != JOB_GROUP or job is None or job.worker is not worker:
            return
        if event.state is WorkerState.SUCCESS:
            self._finish_job()
            self.job_succeeded(job.kind, job.title, worker.result)
        elif event.state is WorkerState.CANCELLED:
            self._finish_job()
            self.notify(f"{job.title}: cancelled.", title="Cancelled", severity="warning")
        elif event.state is WorkerState.ERROR:
            from pipeline.errors import JobCancelled

            self._finish_job()
            error = worker.error
            if isinstance(error, JobCancelled):
                self.notify(error.message, title="Cancelled", severity="warning")
            elif error is not None:
                self.app.push_screen(ErrorModal.for_exception(error))
