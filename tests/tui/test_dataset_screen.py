"""Pilot tests of the Dataset screen, on the real pipeline and the shipped sample files."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

from rich.console import Console
from rich.text import Text
from textual.notifications import Notify
from textual.widgets import ContentSwitcher, Input, ProgressBar, Static

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.help import HelpScreen
from gemma_tui.screens.modals import ErrorModal, OutputPathsModal
from gemma_tui.widgets.issue_list import IssueList
from gemma_tui.widgets.job_bar import JobBar
from gemma_tui.widgets.record_detail import TOKEN_BACKGROUNDS, TRAINED_STYLE
from gemma_tui.widgets.record_table import INVALID_STYLE, RecordTable
from pipeline.data.browse import open_dataset
from pipeline.data.formatter import format_conversation
from tests.tui.conftest import (
    SHAREGPT_SAMPLE,
    TERMINAL_SIZE,
    dataset_screen,
    key_latency,
    settle,
    write_sharegpt_jsonl,
)


def _row_is_red(table: RecordTable, row: int) -> bool:
    cells = table.get_row_at(row)
    return all(isinstance(cell, Text) and cell.style == INVALID_STYLE for cell in cells)


async def test_open_shows_rows_and_highlights_invalid_ones() -> None:
    expected = open_dataset(SHAREGPT_SAMPLE)
    errors = set(expected.error_indices)
    assert errors, "the sample has broken rows on purpose"
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        assert screen.dataset is not None
        table = screen.query_one(RecordTable)
        assert table.row_count == len(expected)
        assert table.border_title == f"Rows 1-{len(expected)} of {len(expected)}"
        for row in range(table.row_count):
            assert _row_is_red(table, row) == (row in errors), row
        issues = screen.query_one(IssueList)
        assert issues.option_count >= len(errors)
        assert screen.sub_title.startswith(SHAREGPT_SAMPLE)


async def test_next_and_previous_error_keys_move_to_the_invalid_rows() -> None:
    errors = list(open_dataset(SHAREGPT_SAMPLE).error_indices)
    assert len(errors) >= 2
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        table = dataset_screen(pilot).query_one(RecordTable)
        assert table.cursor_index == 0
        after_start = [e for e in errors if e > 0]
        await pilot.press("n")
        assert table.cursor_index == after_start[0]
        await pilot.press("n")
        assert table.cursor_index == after_start[1]
        await pilot.press("N")
        assert table.cursor_index == after_start[0]
        await pilot.press("right_square_bracket")
        assert table.cursor_index == after_start[1]
        await pilot.press("left_square_bracket")
        assert table.cursor_index == after_start[0]
        # Selecting an issue in the list jumps to its row.
        issues = dataset_screen(pilot).query_one(IssueList)
        issues.focus()
        last = issues.option_count - 1
        issues.highlighted = last
        await pilot.press("enter")
        await pilot.pause()
        assert table.has_focus
        assert table.cursor_index in errors


async def test_detail_pane_shows_formatted_text_with_trained_spans() -> None:
    dataset = open_dataset(SHAREGPT_SAMPLE)
    first = dataset.checked(0)
    assert first.conversation is not None and not first.issues
    formatted = format_conversation(first.conversation)
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        body = screen.query_one("#detail-body", Static).content
        assert isinstance(body, Text)
        assert body.plain == formatted.text
        trained = [
            (span.start, span.end) for span in body.spans if str(span.style) == TRAINED_STYLE
        ]
        assert trained == list(formatted.trained_spans)
        # Every trained span ends with the model's <end_of_turn>.
        for _, end in trained:
            assert formatted.text[:end].endswith("<end_of_turn>")

        # An invalid row shows its raw row and its issues instead.
        await pilot.press("n")
        index = screen.query_one(RecordTable).cursor_index
        assert index is not None
        record = dataset.checked(index)
        header = screen.query_one("#detail-header", Static).content
        assert isinstance(header, Text)
        assert "invalid" in header.plain
        for issue in record.issues:
            assert issue.reason in header.plain


async def test_convert_writes_output_and_rejects_and_reports_counts(
    tmp_path: Path, workspace: Path
) -> None:
    dataset = open_dataset(SHAREGPT_SAMPLE)
    notes: list[str] = []

    def hook(message: object) -> None:
        if isinstance(message, Notify):
            notes.append(f"{message.notification.title}: {message.notification.message}")

    output = tmp_path / "out" / "converted.jsonl"
    rejects = tmp_path / "out" / "rejected.jsonl"
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE, message_hook=hook) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        modal = app.screen
        assert isinstance(modal, OutputPathsModal)
        # The default is in the workspace's datasets folder, named after the input.
        default = Path(modal.query_one("#output-0", Input).value)
        assert default == workspace / "datasets" / "sample_sharegpt.converted.jsonl"
        # Writing over the input is refused in the modal.
        modal.query_one("#output-0", Input).value = SHAREGPT_SAMPLE
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is modal
        modal.query_one("#output-0", Input).value = str(output)
        modal.query_one("#output-1", Input).value = str(rejects)
        modal.query_one("#output-0", Input).focus()
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, OutputPathsModal | ErrorModal)

    written = output.read_text(encoding="utf-8").splitlines()
    rejected = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    invalid = len(dataset.error_indices)
    assert len(written) == len(dataset) - invalid
    assert len(rejected) == invalid
    assert all(row["issues"] for row in rejected)
    done = [note for note in notes if "done" in note]
    assert done, notes
    assert f"{len(written):,} rows written to {output}" in done[-1]
    assert f"{invalid:,} rejected, written to {rejects}" in done[-1]


async def test_a_big_file_can_be_cancelled_while_the_ui_keeps_answering(tmp_path: Path) -> None:
    big = write_sharegpt_jsonl(tmp_path / "big.jsonl", 300_000, bad={5, 299_000})
    app = GemmaTuiApp(str(big))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await pilot.pause()
        screen = dataset_screen(pilot)
        assert screen.job is not None and screen.job.kind == "open"
        worker = screen.job.worker
        assert worker is not None and worker.is_running
        assert screen.query_one(JobBar).active
        # Wait until the file is being read (the first progress), then press keys.
        while screen.query_one(ProgressBar).total is None:
            await asyncio.sleep(0.01)
        assert worker.is_running
        # A key press is handled while the worker reads the file.
        latency = await key_latency(
            app, "question_mark", lambda: isinstance(app.screen, HelpScreen)
        )
        assert latency < 0.5
        assert worker.is_running
        await key_latency(app, "escape", lambda: not isinstance(app.screen, HelpScreen))
        assert worker.is_running
        # Escape cancels the job.
        latency = await key_latency(app, "escape", lambda: screen.job is None)
        assert latency < 0.5
        assert worker.is_cancelled
        assert not screen.query_one(JobBar).active
        assert screen.dataset is None
        assert screen.query_one("#dataset-body", ContentSwitcher).current == "welcome"
        # The cancelled thread must stop (the app cannot exit while it runs).
        await settle(pilot)


async def test_the_table_is_windowed_and_loads_neighbouring_rows(tmp_path: Path) -> None:
    rows = 1_000
    path = write_sharegpt_jsonl(tmp_path / "thousand.jsonl", rows, bad={3, 750})
    app = GemmaTuiApp(str(path))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        table = dataset_screen(pilot).query_one(RecordTable)
        assert table.row_count == 200
        assert table.border_title == "Rows 1-200 of 1,000"
        # Jumping to an error outside the window loads its window.
        await pilot.press("n", "n")
        await settle(pilot)
        assert table.cursor_index == 750
        assert table.row_count == 200
        assert table.window_start <= 750 < table.window_start + 200
        assert table.border_title == "Rows 651-850 of 1,000"
        assert _row_is_red(table, 750 - table.window_start)
        # Moving past the window's edge loads the next rows.
        await pilot.press("G")
        await settle(pilot)
        assert table.cursor_index == rows - 1
        assert table.border_title == "Rows 801-1,000 of 1,000"
        await pilot.press("g")
        await settle(pilot)
        assert table.cursor_index == 0
        for _ in range(199):
            table.action_cursor_down()
        assert table.cursor_index == 199
        await pilot.press("down")
        await settle(pilot)
        assert table.cursor_index == 200
        assert table.window_start > 0
        await pilot.press("pagedown")
        await settle(pilot)
        index = table.cursor_index
        assert index is not None and index > 200
        await pilot.press("pageup", "pageup")
        await settle(pilot)
        assert table.cursor_index is not None and table.cursor_index < index


async def test_an_unreadable_source_shows_the_error_title_message_and_hint() -> None:
    app = GemmaTuiApp("no/such/file.jsonl")
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.report.title == "Dataset problem"
        assert "no/such/file.jsonl" in modal.report.message
        assert modal.report.hint
        shown = str(modal.query_one("#error-message", Static).content)
        assert "no/such/file.jsonl" in shown
        await pilot.press("escape")
        assert not isinstance(app.screen, ErrorModal)
        assert dataset_screen(pilot).job is None


async def test_validate_dedup_and_split_report_counts_and_write_to_the_workspace(
    workspace: Path,
) -> None:
    notes: list[str] = []

    def hook(message: object) -> None:
        if isinstance(message, Notify):
            notes.append(f"{message.notification.title}: {message.notification.message}")

    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE, message_hook=hook) as pilot:
        await settle(pilot)
        dataset = dataset_screen(pilot).dataset
        assert dataset is not None
        await pilot.press("v")
        await settle(pilot)
        assert dataset.report.summary() in notes[-1]

        for key in ("d", "p"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, OutputPathsModal)
            await pilot.press("enter")  # accept the default paths
            await settle(pilot)
            assert not isinstance(app.screen, OutputPathsModal | ErrorModal)

    datasets = workspace / "datasets"
    kept = (datasets / "sample_sharegpt.dedup.jsonl").read_text().splitlines()
    removed = (datasets / "sample_sharegpt.dedup.removed.jsonl").read_text().splitlines()
    train = (datasets / "sample_sharegpt.train.jsonl").read_text().splitlines()
    evals = (datasets / "sample_sharegpt.eval.jsonl").read_text().splitlines()
    valid = len(dataset) - len(dataset.error_indices)
    assert len(kept) + len(removed) == valid
    assert len(train) + len(evals) == valid
    assert any(f"{len(kept):,} rows kept" in note for note in notes), notes
    assert any(f"{len(train):,} train rows" in note for note in notes), notes


async def test_stats_load_the_tokenizer_and_show_token_boundaries() -> None:
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        await pilot.press("s")
        assert screen.query_one("#right", ContentSwitcher).current == "stats"
        await settle(pilot, timeout=180)  # the first run builds the tokenizer (~30 s)
        assert screen.tokenizer is not None
        console = Console(record=True, width=80, file=io.StringIO())
        console.print(screen.query_one("#stats-summary", Static).content)
        summary = console.export_text()
        assert "tokens, p90" in summary and "trained share" in summary
        assert screen.query("LengthHistogram")
        # Back to the record: its header now counts tokens.
        await pilot.press("s")
        assert screen.query_one("#right", ContentSwitcher).current == "detail"
        header = screen.query_one("#detail-header", Static).content
        assert isinstance(header, Text)
        assert "tokens" in header.plain


async def test_token_boundaries_are_the_tokenizer_spans_also_for_byte_fallback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flamingo.jsonl"
    turns = [
        {"from": "human", "value": "Draw a 🦩, please."},
        {"from": "gpt", "value": "Here: 🦩𐍈."},  # both are byte-fallback pieces
    ]
    path.write_text(json.dumps({"conversations": turns}) + "\n", encoding="utf-8")
    app = GemmaTuiApp(str(path))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        await pilot.press("s")
        await settle(pilot, timeout=180)
        await pilot.press("s")
        tokenizer = screen.tokenizer
        assert tokenizer is not None
        header = screen.query_one("#detail-header", Static).content
        body = screen.query_one("#detail-body", Static).content
        assert isinstance(header, Text) and isinstance(body, Text)
        assert "tokens alternate background" in header.plain
        spans = [(start, end) for start, end in tokenizer.token_spans(body.plain) if end > start]
        flamingo = body.plain.index("🦩")
        assert (flamingo, flamingo + 1) in spans  # one character, four byte pieces
        shaded = [
            (span.start, span.end) for span in body.spans if span.style == TOKEN_BACKGROUNDS[0]
        ]
        assert shaded == spans[0::2]
