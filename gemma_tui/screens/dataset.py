"""The Dataset screen: open a file, browse its records, see what is wrong, run the data jobs.

UI only: every read, check, conversion and measurement is a :mod:`pipeline.data` call made
in a thread worker (``pipeline.data`` pulls pandas/pandera/pyarrow, so it is imported inside
the workers, never at startup). Workers report through :class:`~gemma_tui.bridge.EventBridge`
(messages only; no widget is touched from a thread) and stop when ``should_stop`` sees the
worker cancelled (Escape); :class:`~gemma_tui.screens.job_screen.JobScreen` runs that loop and
:mod:`gemma_tui.screens.dataset_jobs` holds what the threads do. One job runs at a time;
reading a window of records for the table is not a job (about 4 ms; the newest request wins).
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import ContentSwitcher, Footer, Header, Static
from textual.worker import Worker, WorkerState, get_current_worker

from gemma_tui.screens.dataset_jobs import (
    OUTPUTS,
    DataJob,
    JobKind,
    LoadedWindow,
    OpenedView,
    StatsOutcome,
    default_outputs,
    describe_result,
    describe_source,
    measure,
    open_view,
    read_window,
    run_data_job,
)
from gemma_tui.screens.dataset_keys import DATASET_BINDINGS, NEEDS_DATASET, RECORD_KEYS, WELCOME
from gemma_tui.screens.dataset_modals import SeqLenModal, SpecModal
from gemma_tui.screens.help import HelpSection, describe_bindings
from gemma_tui.screens.job_screen import JobScreen
from gemma_tui.screens.modals import (
    ErrorModal,
    FileOpenModal,
    OpenRequest,
    OutputChoice,
    OutputField,
    OutputPathsModal,
)
from gemma_tui.widgets.issue_list import IssueList
from gemma_tui.widgets.job_bar import JobBar
from gemma_tui.widgets.record_detail import RecordDetail
from gemma_tui.widgets.record_table import WINDOW_SIZE, RecordTable
from gemma_tui.widgets.stats_pane import StatsPane

if TYPE_CHECKING:
    from textual.app import ComposeResult

    from pipeline.data.browse import OpenedDataset
    from pipeline.data.types import DatasetSpec
    from pipeline.data.validate import CheckedRecord
    from pipeline.models.tokenizer import GemmaTokenizer

DEFAULT_MAX_SEQ_LEN = 1024
"""Sequence length the stats are measured against at first (the profiles' default)."""
HISTOGRAM_BINS = 24


class DatasetScreen(JobScreen):
    """Open a dataset, browse it, find its errors, convert/dedup/split it, measure it."""

    CSS_PATH = Path(__file__).with_name("dataset.tcss")
    BINDINGS: ClassVar[list[BindingType]] = DATASET_BINDINGS

    def __init__(self, source: str | None = None) -> None:
        super().__init__()
        self.initial_source = source
        self.dataset: OpenedDataset | None = None
        self.source: str | None = None
        self.spec: DatasetSpec | None = None
        self.tokenizer: GemmaTokenizer | None = None
        self.max_seq_len = DEFAULT_MAX_SEQ_LEN
        """What the stats measure against (``m`` changes it)."""
        self._stats_of: tuple[str, int] | None = None
        """(source, max_seq_len) of the stats shown."""
        # OpenedDataset reads records by seeking one file handle; a cancelled window
        # worker may still be reading while the next one starts.
        self._read_lock = threading.Lock()

    # ---- layout

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield JobBar(id="job-bar")
        with ContentSwitcher(initial="welcome", id="dataset-body"):
            yield Static(WELCOME, id="welcome")
            with Horizontal(id="browser"):
                with Vertical(id="left"):
                    yield RecordTable(id="records")
                    yield IssueList(id="issues")
                with ContentSwitcher(initial="detail", id="right"):
                    yield RecordDetail(id="detail")
                    yield StatsPane(id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "Dataset"
        self.query_one(RecordDetail).border_title = "Record, as the model sees it"
        self._title_stats()
        if self.initial_source:
            self.open_source(self.initial_source)

    def help_sections(self) -> list[HelpSection]:
        return [
            ("Dataset", describe_bindings(self.app, self.BINDINGS)),
            ("Records", RECORD_KEYS),
        ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_job":
            return self.busy
        if action in NEEDS_DATASET:
            return True if self.dataset is not None else None
        return True

    # ---- jobs

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != "window":
            return  # jobs: see JobScreen
        if event.state is WorkerState.SUCCESS and isinstance(worker.result, LoadedWindow):
            self._show_window(worker.result)
        elif event.state is WorkerState.ERROR and worker.error is not None:
            self.app.push_screen(ErrorModal.for_exception(worker.error))

    def job_succeeded(self, kind: str, title: str, result: Any) -> None:
        if kind == "open" and isinstance(result, OpenedView):
            self._show_dataset(result)
        elif kind == "stats" and isinstance(result, StatsOutcome):
            self.tokenizer = result.tokenizer
            self._stats_of = (result.source, result.stats.max_seq_len)
            self.query_one(StatsPane).show_stats(
                result.stats,
                edges=result.edges,
                counts=result.counts,
                max_seq_len=result.stats.max_seq_len,
            )
            self._refresh_detail()
        else:
            self.notify(describe_result(kind, result), title=f"{title}: done", timeout=12)

    # ---- open

    def action_open(self) -> None:
        def chosen(request: OpenRequest | None) -> None:
            if request is not None:
                self.open_source(request.source, request.spec)

        self.app.push_screen(FileOpenModal(self.source, self.spec), chosen)

    def action_reopen(self) -> None:
        source = self.source
        if source is None or self.say_busy():
            return

        def chosen(spec: DatasetSpec | None) -> None:
            if spec is not None:
                self.open_source(source, spec)

        self.app.push_screen(SpecModal(source, self.spec), chosen)

    def open_source(self, source: str, spec: DatasetSpec | None = None) -> None:
        """Open ``source`` (a file, a folder or a glob) in a worker, read as ``spec`` says
        (None: detect the format per file). What was open stays open if this fails."""
        job = self.start_job("open", f"Opening {source}")
        if job is not None:
            job.worker = self._open_worker(source, spec, job.job_id)

    @work(thread=True, exit_on_error=False, group="job", description="Opening a dataset")
    def _open_worker(self, source: str, spec: DatasetSpec | None, job_id: int) -> OpenedView:
        body = partial(open_view, source, spec, window_size=WINDOW_SIZE, lock=self._read_lock)
        return self.run_job(job_id, body)

    def _show_dataset(self, view: OpenedView) -> None:
        dataset = view.dataset
        self.dataset = dataset
        self.source = view.source
        self.spec = dataset.spec
        self._stats_of = None
        self.sub_title = describe_source(view.source, dataset)
        self.query_one("#dataset-body", ContentSwitcher).current = "browser"
        self.query_one("#right", ContentSwitcher).current = "detail"
        self.query_one(StatsPane).reset()
        table = self.query_one(RecordTable)
        table.show_window(0, view.records, len(dataset), 0)
        invalid = len(dataset.error_indices)
        table.border_subtitle = f"{invalid:,} invalid" if invalid else "all valid"
        self.query_one(IssueList).show_issues(
            view.issues,
            rows=invalid,
            issues=dataset.report.issue_count,
            show_path=len(dataset.paths) > 1,
        )
        if not len(dataset):
            self.query_one(RecordDetail).show_message("The dataset has no records.")
        table.focus()
        self.refresh_bindings()
        self.notify(
            f"{len(dataset):,} records, {invalid:,} invalid.",
            title=f"Opened {view.source}",
            severity="warning" if invalid else "information",
        )

    # ---- browsing

    @on(RecordTable.WindowRequested)
    def _window_requested(self, message: RecordTable.WindowRequested) -> None:
        if self.dataset is not None:
            self._window_worker(self.dataset, message.start, message.index)

    @work(thread=True, exclusive=True, exit_on_error=False, group="window")
    def _window_worker(self, dataset: OpenedDataset, start: int, index: int) -> LoadedWindow | None:
        worker = get_current_worker()
        return read_window(
            dataset,
            start,
            index,
            window_size=WINDOW_SIZE,
            lock=self._read_lock,
            is_cancelled=lambda: worker.is_cancelled,
        )

    def _show_window(self, window: LoadedWindow) -> None:
        if window.dataset is not self.dataset:
            return
        self.query_one(RecordTable).show_window(
            window.start, window.records, len(window.dataset), window.index
        )

    @on(RecordTable.RecordHighlighted)
    def _record_highlighted(self, message: RecordTable.RecordHighlighted) -> None:
        self._show_record(message.index, message.record)
        self.query_one(IssueList).highlight_record(message.index)

    def _show_record(self, index: int, record: CheckedRecord) -> None:
        many = self.dataset is not None and len(self.dataset.paths) > 1
        self.query_one(RecordDetail).show_record(index, record, self.tokenizer, show_path=many)

    def _refresh_detail(self) -> None:
        table = self.query_one(RecordTable)
        index = table.cursor_index
        if index is not None and (record := table.record_at(index)) is not None:
            self._show_record(index, record)

    @on(IssueList.IssueSelected)
    def _issue_selected(self, message: IssueList.IssueSelected) -> None:
        table = self.query_one(RecordTable)
        table.go_to(message.index)
        table.focus()

    def _current_index(self) -> int:
        table = self.query_one(RecordTable)
        pending = table.pending_index
        if pending is not None:
            return pending
        return table.cursor_index or 0

    def action_next_error(self) -> None:
        self._jump_to_error(forward=True)

    def action_previous_error(self) -> None:
        self._jump_to_error(forward=False)

    def _jump_to_error(self, *, forward: bool) -> None:
        dataset = self.dataset
        if dataset is None:
            return
        title = "Next error" if forward else "Previous error"
        index = self._current_index()
        target = dataset.next_error(index) if forward else dataset.previous_error(index)
        if target is None:
            if not len(dataset.error_indices):
                self.notify("No invalid rows.", title=title)
                return
            target = dataset.error_indices[0 if forward else -1]
            self.notify(
                f"Wrapped to the {'first' if forward else 'last'} invalid row.", title=title
            )
        self.query_one(RecordTable).go_to(target)

    # ---- stats

    def action_stats(self) -> None:
        if self.dataset is None or self.source is None:
            return
        right = self.query_one("#right", ContentSwitcher)
        if right.current == "stats":
            right.current = "detail"
            return
        right.current = "stats"
        self._measure()

    def action_max_seq_len(self) -> None:
        if self.dataset is None or self.say_busy():
            return

        def chosen(length: int | None) -> None:
            if length is None:
                return
            self.max_seq_len = length
            self._title_stats()
            self.query_one("#right", ContentSwitcher).current = "stats"
            self._measure()

        self.app.push_screen(SeqLenModal(self.max_seq_len), chosen)

    def _title_stats(self) -> None:
        stats = self.query_one(StatsPane)
        stats.border_title = f"Token statistics (max_seq_len {self.max_seq_len:,})"
        stats.border_subtitle = "m changes max_seq_len"

    def _measure(self) -> None:
        """Compute the stats of the open dataset at ``max_seq_len`` unless they are shown."""
        source = self.source
        if source is None or self._stats_of == (source, self.max_seq_len) or self.busy:
            return
        first = self.tokenizer is None
        job = self.start_job("stats", "Token statistics")
        if job is None:
            return
        if first:
            self.query_one(JobBar).show_detail(
                "loading the tokenizer (built from the embedded GGUF the first time: a second)"
            )
        self.query_one(StatsPane).show_computing(first_time=first)
        job.worker = self._stats_worker(
            source, self.spec, self.tokenizer, self.max_seq_len, job.job_id
        )

    @work(thread=True, exit_on_error=False, group="job", description="Token statistics")
    def _stats_worker(
        self,
        source: str,
        spec: DatasetSpec | None,
        tokenizer: GemmaTokenizer | None,
        max_seq_len: int,
        job_id: int,
    ) -> StatsOutcome:
        body = partial(
            measure, source, spec, tokenizer, max_seq_len=max_seq_len, bins=HISTOGRAM_BINS
        )
        return self.run_job(job_id, body)

    # ---- validate, convert, dedup, split

    def action_validate(self) -> None:
        if self.source is None:
            return
        job = self.start_job("validate", f"Validating {self.source}")
        if job is not None:
            job.worker = self._data_worker(DataJob("validate", self.source, self.spec), job.job_id)

    def _ask_outputs(self, kind: JobKind, title: str, *, formats: tuple[str, ...] = ()) -> None:
        """Show where ``kind`` will write (editable), then run it."""
        source, dataset = self.source, self.dataset
        if source is None or dataset is None or self.say_busy():
            return
        fields = [
            OutputField(label, default)
            for label, default in zip(OUTPUTS[kind], default_outputs(source, kind), strict=True)
        ]
        modal = OutputPathsModal(
            f"{title} {source}",
            fields,
            inputs=dataset.paths,
            options=formats,
            option_label="Write as",
        )

        def chosen(choice: OutputChoice | None) -> None:
            if choice is None:
                return
            job = self.start_job(kind, f"{title} {source}")
            if job is not None:
                request = DataJob(kind, source, self.spec, choice.paths, choice.option)
                job.worker = self._data_worker(request, job.job_id)

        self.app.push_screen(modal, chosen)

    def action_convert(self) -> None:
        self._ask_outputs("convert", "Convert", formats=("sharegpt", "chatml"))

    def action_dedup(self) -> None:
        self._ask_outputs("dedup", "Deduplicate")

    def action_split(self) -> None:
        self._ask_outputs("split", "Split")

    @work(thread=True, exit_on_error=False, group="job", description="Dataset job")
    def _data_worker(self, request: DataJob, job_id: int) -> Any:
        return self.run_job(job_id, partial(run_data_job, request))
