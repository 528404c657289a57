"""The file-open modal (path completion, the tree) and the output-path modal."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, Label

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.dataset import DatasetScreen
from gemma_tui.screens.modals import FileOpenModal
from gemma_tui.widgets.path_input import DATASET_SUFFIXES, complete_path
from gemma_tui.widgets.record_table import RecordTable
from tests.tui.conftest import TERMINAL_SIZE, dataset_screen, settle


def test_complete_path_completes_folders_and_dataset_files(tmp_path: Path) -> None:
    assert complete_path("pipel") == "pipeline/"
    assert complete_path("pipeline/data/samples/sample_ch") == (
        "pipeline/data/samples/sample_chatml.jsonl"
    )
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "nine.jsonl").write_text("{}\n")
    (tmp_path / ".hidden.jsonl").write_text("{}\n")
    datasets = {"suffixes": DATASET_SUFFIXES}
    assert complete_path(f"{tmp_path}/n", **datasets) == f"{tmp_path}/nine.jsonl"
    assert complete_path(f"{tmp_path}/no") == f"{tmp_path}/notes.txt"
    assert complete_path(f"{tmp_path}/no", **datasets) is None  # .txt is not a dataset
    assert complete_path(f"{tmp_path}/.h") == f"{tmp_path}/.hidden.jsonl"
    assert complete_path(f"{tmp_path}/") == f"{tmp_path}/nine.jsonl"  # hidden ones left out
    assert complete_path(f"{tmp_path}/missing/x") is None
    assert complete_path("") is None


async def test_open_modal_completes_with_tab_and_opens_the_file() -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await pilot.press("o")
        assert isinstance(app.screen, FileOpenModal)
        await pilot.press(*"pipeline/data/samples/sample_ch")
        path_input = app.screen.query_one("#open-path", Input)
        for _ in range(50):  # the suggestion is computed in a thread
            await pilot.pause(0.02)
            await pilot.press("tab")
            if path_input.value.endswith(".jsonl"):
                break
        assert path_input.value == "pipeline/data/samples/sample_chatml.jsonl"
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DatasetScreen)
        screen = dataset_screen(pilot)
        assert screen.source == "pipeline/data/samples/sample_chatml.jsonl"
        assert screen.query_one(RecordTable).row_count > 0


async def test_open_modal_refuses_a_missing_path() -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await pilot.press("o")
        modal = app.screen
        assert isinstance(modal, FileOpenModal)
        modal.query_one("#open-path", Input).value = "no/such.jsonl"
        await pilot.press("enter")
        assert app.screen is modal
        assert "Not found" in str(modal.query_one("#open-error", Label).render())
        await pilot.press("escape")
        assert isinstance(app.screen, DatasetScreen)
        assert dataset_screen(pilot).job is None
