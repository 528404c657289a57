"""Reading a dataset with a format and column/role names (the open modal, ``f``), and the
stats' sequence length (``m``): Pilot, on the real pipeline and real files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import cast

import numpy as np
from rich.console import Console
from rich.text import Text
from textual.notifications import Notify
from textual.widgets import Input, Label, Select, Static

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.dataset_modals import SeqLenModal, SpecModal
from gemma_tui.screens.modals import ErrorModal, FileOpenModal, OutputPathsModal
from gemma_tui.widgets.length_histogram import LengthHistogram
from gemma_tui.widgets.record_table import RecordTable
from pipeline.data.browse import open_dataset
from pipeline.data.formatter import format_conversation
from pipeline.data.stats import compute_stats
from pipeline.data.types import DatasetSpec, Role
from pipeline.models.tokenizer import load_tokenizer
from tests.tui.conftest import SHAREGPT_SAMPLE, TERMINAL_SIZE, dataset_screen, settle

COLUMNS = "messages=dialog, role=who, content=text"
ROLES = "asker=user, bot=model"
SPEC = DatasetSpec(
    "sharegpt",
    columns={"messages": "dialog", "role": "who", "content": "text"},
    roles={"asker": "user", "bot": "model"},
)


def write_custom_jsonl(path: Path, rows: int) -> Path:
    """ShareGPT-shaped rows under other names: ``dialog`` of ``{who, text}``, asker/bot."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            dialog = [
                {"who": "asker", "text": f"What is {i} times three?"},
                {"who": "bot", "text": f"{i} times three is {3 * i}."},
            ]
            f.write(json.dumps({"dialog": dialog}) + "\n")
    return path


def _text(label: Label | Static) -> str:
    return str(label.render())


async def test_the_open_modal_reads_a_custom_layout_with_format_and_mapping(
    tmp_path: Path,
) -> None:
    path = write_custom_jsonl(tmp_path / "custom.jsonl", 12)
    expected = open_dataset(path, SPEC)
    assert len(expected) == 12 and not len(expected.error_indices)
    first = expected.checked(0).conversation
    assert first is not None
    notes: list[str] = []

    def hook(message: object) -> None:
        if isinstance(message, Notify):
            notes.append(f"{message.notification.title}: {message.notification.message}")

    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE, message_hook=hook) as pilot:
        await pilot.press("o")
        modal = app.screen
        assert isinstance(modal, FileOpenModal)
        modal.query_one("#open-path", Input).value = str(path)
        # The format, picked from the Select's list with the keyboard (auto, sharegpt, ...).
        select = modal.query_one("#spec-format", Select)
        assert select.value == "auto"
        select.focus()
        await pilot.press("enter", "down", "enter")
        assert select.value == "sharegpt"
        modal.query_one("#spec-columns", Input).focus()
        await pilot.press(*COLUMNS)
        modal.query_one("#spec-roles", Input).focus()
        await pilot.press(*ROLES)
        assert not modal.query_one("#spec-error", Label).display
        await pilot.press("enter")
        await settle(pilot)

        screen = dataset_screen(pilot)
        assert app.screen is screen
        assert screen.spec == SPEC
        table = screen.query_one(RecordTable)
        assert table.row_count == 12
        assert table.border_subtitle == "all valid"
        assert screen.sub_title == (f"{path} · sharegpt (set) · columns {COLUMNS}; roles {ROLES}")
        body = screen.query_one("#detail-body", Static).content
        assert isinstance(body, Text)
        assert body.plain == format_conversation(first).text
        # The jobs read it the same way: validate finds every row valid.
        await pilot.press("v")
        await settle(pilot)
        assert expected.report.summary() in notes[-1]


async def test_an_invalid_mapping_is_shown_inline_and_enter_does_not_open(
    tmp_path: Path,
) -> None:
    path = write_custom_jsonl(tmp_path / "custom.jsonl", 3)
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await pilot.press("o")
        modal = app.screen
        assert isinstance(modal, FileOpenModal)
        modal.query_one("#open-path", Input).value = str(path)
        select = modal.query_one("#spec-format", Select)
        columns = modal.query_one("#spec-columns", Input)
        roles = modal.query_one("#spec-roles", Input)
        error = modal.query_one("#spec-error", Label)

        roles.focus()
        await pilot.press(*"asker=user, bot=robot")
        assert error.display
        assert "'robot' is not a canonical role" in _text(error)
        assert "tool_result" in _text(error)  # the roles to use
        assert roles.has_class("-invalid")
        await pilot.press("enter")
        assert app.screen is modal
        assert "Fix the column or role names" in _text(modal.query_one("#open-error", Label))
        screen = dataset_screen(pilot)
        assert screen.job is None and screen.dataset is None

        roles.value = "asker=user, bot"
        await pilot.pause()
        assert "'bot' is not NAME=ROLE" in _text(error)
        roles.value = ROLES
        columns.value = "dialog=messages"
        await pilot.pause()
        assert "'dialog' is not a column key of any format" in _text(error)
        assert columns.has_class("-invalid") and not roles.has_class("-invalid")
        # Which keys exist depends on the format: Alpaca's "response" is no ShareGPT key.
        columns.value = "response=answer"
        await pilot.pause()
        assert not error.display
        select.value = "sharegpt"
        await pilot.pause()
        assert "'response' is not a column key of sharegpt" in _text(error)
        select.value = "alpaca"
        await pilot.pause()
        assert "alpaca has no roles to rename" in _text(error)
        assert roles.has_class("-invalid") and not columns.has_class("-invalid")

        select.value = "sharegpt"
        columns.value = COLUMNS
        await pilot.pause()
        assert not error.display
        columns.focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is screen
        assert screen.spec == SPEC
        assert screen.dataset is not None and not len(screen.dataset.error_indices)


async def test_f_reopens_the_file_with_another_spec_that_every_job_uses(
    tmp_path: Path, workspace: Path
) -> None:
    path = write_custom_jsonl(tmp_path / "custom.jsonl", 12)
    app = GemmaTuiApp(str(path))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        detected = screen.dataset
        assert detected is not None
        assert len(detected.error_indices) == 12  # no format matches these names
        assert screen.sub_title == f"{path} · format unknown"

        await pilot.press("f")
        modal = app.screen
        assert isinstance(modal, SpecModal)
        select = modal.query_one("#spec-format", Select)
        assert select.has_focus and select.value == "auto"
        assert modal.query_one("#spec-columns", Input).value == ""
        await pilot.press("enter", "down", "enter")
        modal.query_one("#spec-columns", Input).focus()
        await pilot.press(*COLUMNS)
        modal.query_one("#spec-roles", Input).focus()
        await pilot.press(*ROLES, "enter")
        await settle(pilot)
        assert app.screen is screen
        assert screen.dataset is not detected
        assert screen.spec == SPEC
        assert not len(screen.dataset.error_indices)
        assert screen.query_one(RecordTable).border_subtitle == "all valid"
        assert "sharegpt (set)" in screen.sub_title

        # f again shows the spec in use.
        await pilot.press("f")
        modal = app.screen
        assert isinstance(modal, SpecModal)
        assert modal.query_one("#spec-format", Select).value == "sharegpt"
        assert modal.query_one("#spec-columns", Input).value == COLUMNS
        assert modal.query_one("#spec-roles", Input).value == ROLES
        await pilot.press("escape")
        assert app.screen is screen

        # Convert reads the file with it too: every row is written.
        await pilot.press("c")
        assert isinstance(app.screen, OutputPathsModal)
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, OutputPathsModal | ErrorModal)
    written = (workspace / "datasets" / "custom.converted.jsonl").read_text().splitlines()
    assert len(written) == 12
    assert json.loads(written[0])["conversations"][1] == {
        "from": "gpt",
        "value": "0 times three is 0.",
    }


async def test_a_spec_the_pipeline_refuses_shows_the_error_and_keeps_the_dataset() -> None:
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        before, spec, sub_title = screen.dataset, screen.spec, screen.sub_title
        assert before is not None
        # The modals refuse such a role; the pipeline does too (Converter: DatasetError).
        roles = cast("dict[str, Role]", {"gpt": "robot"})
        screen.open_source(SHAREGPT_SAMPLE, DatasetSpec("sharegpt", roles=roles))
        await settle(pilot)
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.report.title == "Dataset problem"
        assert "robot" in modal.report.message
        await pilot.press("escape")
        assert app.screen is screen
        assert screen.dataset is before and screen.spec == spec
        assert screen.sub_title == sub_title
        assert screen.query_one(RecordTable).row_count == len(before)


def _over_max_seq_len(summary: Static) -> str:
    """The stats summary's "over max_seq_len N" row, its label and value one space apart."""
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(summary.content)
    for line in console.export_text().splitlines():
        if line.startswith("over max_seq_len"):
            return " ".join(line.split())
    raise AssertionError("no over max_seq_len row")


async def test_changing_max_seq_len_measures_again_and_updates_the_over_count() -> None:
    tokenizer = load_tokenizer()
    at_default = compute_stats(SHAREGPT_SAMPLE, tokenizer=tokenizer, max_seq_len=1024)
    length = int(np.median(at_default.lengths))
    expected = compute_stats(SHAREGPT_SAMPLE, tokenizer=tokenizer, max_seq_len=length)
    assert 0 < expected.truncated < expected.examples
    assert expected.truncated != at_default.truncated

    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await settle(pilot)
        screen = dataset_screen(pilot)
        stats = screen.query_one("#stats-summary", Static)
        await pilot.press("s")
        await settle(pilot, timeout=180)
        assert _over_max_seq_len(stats).startswith(
            f"over max_seq_len 1,024 {at_default.truncated:,}"
        )
        await pilot.press("s")  # back to the record; m shows the stats again

        await pilot.press("m")
        modal = app.screen
        assert isinstance(modal, SeqLenModal)
        field = modal.query_one("#seq-len", Input)
        assert field.value == "1024"
        field.value = "4"
        await pilot.press("enter")
        assert app.screen is modal
        assert "Use 8 to 32,768 tokens" in _text(modal.query_one("#seq-len-error", Label))
        field.value = str(length)
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is screen
        assert screen.max_seq_len == length
        share = expected.truncated / expected.examples
        assert _over_max_seq_len(stats) == (
            f"over max_seq_len {length:,} {expected.truncated:,} ({share:.1%})"
        )
        assert screen.query_one(LengthHistogram).limit == length
        assert f"max_seq_len {length:,}" in str(screen.query_one("#stats").border_title)
