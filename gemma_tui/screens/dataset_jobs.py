"""What the Dataset screen's workers do in their threads: pipeline calls, and nothing else.

Every function here runs in a ``@work(thread=True)`` worker of
:class:`~gemma_tui.screens.dataset.DatasetScreen`. They touch no widget: they take plain
values, call :mod:`pipeline.data` (imported here, inside the functions, so pandas/pandera/
pyarrow stay off the startup path), report through ``on_event`` and hand back frozen values
that the screen shows once the worker has finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gemma_tui.widgets.issue_list import MAX_LISTED, IssueEntry
from gemma_tui.widgets.spec_fields import describe_spec

if TYPE_CHECKING:
    from pipeline.data.browse import OpenedDataset
    from pipeline.data.stats import DatasetStats
    from pipeline.data.types import DatasetSpec
    from pipeline.data.validate import CheckedRecord
    from pipeline.events import EventSink, StopCheck
    from pipeline.models.tokenizer import GemmaTokenizer

JobKind = Literal["open", "stats", "validate", "convert", "dedup", "split"]

OUTPUTS: dict[str, tuple[str, str]] = {
    "convert": ("Valid rows (JSONL)", "Rejected rows, with their issues"),
    "dedup": ("Kept rows (JSONL)", "Removed rows, and what they duplicate"),
    "split": ("Train rows (JSONL)", "Eval rows (JSONL, 10%)"),
}
"""Per job: the label of each output the user may edit before it runs (the default names are
the workspace's, :meth:`pipeline.workspace.Workspace.dataset_outputs`)."""


@dataclass(frozen=True, slots=True)
class OpenedView:
    """What the open job hands back: the dataset, its first window and its listed issues."""

    source: str
    dataset: OpenedDataset
    records: tuple[CheckedRecord, ...]
    issues: tuple[IssueEntry, ...]


@dataclass(frozen=True, slots=True)
class LoadedWindow:
    """Records ``start ..`` of ``dataset``; the cursor goes to ``index``."""

    dataset: OpenedDataset
    start: int
    records: tuple[CheckedRecord, ...]
    index: int


@dataclass(frozen=True, slots=True)
class StatsOutcome:
    """Token statistics, the histogram's bins, and the tokenizer loaded on the way."""

    source: str
    tokenizer: GemmaTokenizer
    stats: DatasetStats
    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DataJob:
    """A validate, convert, dedup or split job, as the user asked for it."""

    kind: JobKind
    source: str
    spec: DatasetSpec | None
    outputs: tuple[Path, ...] = ()
    option: str | None = None
    """convert: the output format ("sharegpt" or "chatml")."""


def default_outputs(source: str, kind: str) -> list[Path]:
    """Where ``kind`` writes by default (the workspace's naming, shared with the CLI)."""
    from pipeline.workspace import Workspace

    return list(Workspace.default().dataset_outputs(source, kind))  # type: ignore[arg-type]


def open_view(
    source: str,
    spec: DatasetSpec | None,
    *,
    window_size: int,
    lock: threading.Lock,
    on_event: EventSink,
    should_stop: StopCheck,
) -> OpenedView:
    """Open ``source`` as ``spec`` says (None: detect the format per file) in one streaming
    pass, then read its first window and its issues."""
    from pipeline.data.browse import open_dataset
    from pipeline.data.types import DatasetSpec

    dataset = open_dataset(
        source, spec or DatasetSpec(), on_event=on_event, should_stop=should_stop
    )
    with lock:
        records = tuple(dataset.checked(i) for i in range(min(window_size, len(dataset))))
    entries: list[IssueEntry] = [
        (None, issue) for issue in dataset.report.issues if issue.index is None
    ]
    for index in dataset.error_indices[:MAX_LISTED]:
        entries.extend((int(index), issue) for issue in dataset.issues_for(index))
    return OpenedView(source, dataset, records, tuple(entries))


def read_window(
    dataset: OpenedDataset,
    start: int,
    index: int,
    *,
    window_size: int,
    lock: threading.Lock,
    is_cancelled: Callable[[], bool],
) -> LoadedWindow | None:
    """Records ``start .. start + window_size`` (about 4 ms for 200); None when cancelled."""
    records: list[CheckedRecord] = []
    for i in range(start, min(start + window_size, len(dataset))):
        if is_cancelled():
            return None
        with lock:
            records.append(dataset.checked(i))
    return LoadedWindow(dataset, start, tuple(records), index)


def measure(
    source: str,
    spec: DatasetSpec | None,
    tokenizer: GemmaTokenizer | None,
    *,
    max_seq_len: int,
    bins: int,
    on_event: EventSink,
    should_stop: StopCheck,
) -> StatsOutcome:
    """Load the tokenizer if needed (built from the embedded GGUF the first time, ~30 s),
    then measure ``source`` and bin its token lengths."""
    from pipeline.data.stats import compute_stats
    from pipeline.data.types import DatasetSpec
    from pipeline.models.tokenizer import load_tokenizer

    tok = tokenizer or load_tokenizer(on_event=on_event)
    stats = compute_stats(
        source,
        spec=spec or DatasetSpec(),
        tokenizer=tok,
        max_seq_len=max_seq_len,
        on_event=on_event,
        should_stop=should_stop,
    )
    counts, edges = stats.histogram(bins)
    return StatsOutcome(
        source, tok, stats, tuple(float(e) for e in edges), tuple(int(c) for c in counts)
    )


def run_data_job(job: DataJob, *, on_event: EventSink, should_stop: StopCheck) -> Any:
    """Run a validate/convert/dedup/split job; returns the pipeline's result."""
    from pipeline.data.types import DatasetSpec

    spec = job.spec or DatasetSpec()
    for path in job.outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    source, outputs = job.source, job.outputs
    if job.kind == "validate":
        from pipeline.data.validate import validate_dataset

        return validate_dataset(source, spec, on_event=on_event, should_stop=should_stop)
    if job.kind == "convert":
        from pipeline.data.validate import convert_dataset

        return convert_dataset(
            source,
            outputs[0],
            spec=spec,
            to="chatml" if job.option == "chatml" else "sharegpt",
            rejects=outputs[1],
            on_event=on_event,
            should_stop=should_stop,
        )
    if job.kind == "dedup":
        from pipeline.data.dedup import dedup_dataset

        return dedup_dataset(
            source,
            outputs[0],
            spec=spec,
            removed=outputs[1],
            on_event=on_event,
            should_stop=should_stop,
        )
    if job.kind == "split":
        from pipeline.data.split import split_dataset

        return split_dataset(
            source, outputs[0], outputs[1], spec=spec, on_event=on_event, should_stop=should_stop
        )
    raise ValueError(f"not a data job: {job.kind!r}")


def describe_result(kind: str, result: Any) -> str:
    """One notification's text for a finished job: counts and output paths."""
    if kind == "validate":
        codes = sorted(result.counts_by_code.items(), key=lambda item: -item[1])[:4]
        text = result.summary() + "."
        if codes:
            text += "\n" + ", ".join(f"{code} {count:,}" for code, count in codes)
        return text
    if kind == "convert":
        return (
            f"{result.valid:,} rows written to {result.output}\n"
            f"{result.rejected:,} rejected, written to {result.rejects}"
        )
    if kind == "dedup":
        return (
            f"{result.kept:,} rows kept, written to {result.output}\n"
            f"{result.removed_count:,} removed ({result.exact_removed:,} exact, "
            f"{result.near_removed:,} near), listed in {result.removed}\n"
            f"{result.invalid:,} invalid rows skipped"
        )
    if kind == "split":
        return (
            f"{result.train_count:,} train rows written to {result.train}\n"
            f"{result.eval_count:,} eval rows written to {result.eval}\n"
            f"{result.invalid:,} invalid rows skipped"
        )
    return str(result)


def describe_source(source: str, dataset: OpenedDataset) -> str:
    """The screen's subtitle: the source, its formats (marked "(set)" when the spec chose the
    format rather than detection) and the column and role names the spec renames."""
    formats = ", ".join(sorted(set(dataset.formats.values())))
    if formats and dataset.spec.format is not None:
        formats += " (set)"
    text = f"{source} · {formats or ('format unknown' if len(dataset) else 'no records')}"
    renamed = describe_spec(dataset.spec)
    return f"{text} · {renamed}" if renamed else text
