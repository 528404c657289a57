"""The app shell: modes, help, command palette, quitting while a job runs."""

from __future__ import annotations

from pathlib import Path

from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Static

from gemma_tui.app import MODES, PALETTE_COMMANDS, GemmaTuiApp
from gemma_tui.screens.chat import ChatScreen
from gemma_tui.screens.dataset import DatasetScreen
from gemma_tui.screens.export import ExportScreen
from gemma_tui.screens.help import HelpScreen
from gemma_tui.screens.modals import ConfirmModal, FileOpenModal
from gemma_tui.screens.runs import RunsScreen
from gemma_tui.screens.train import TrainScreen
from tests.tui.conftest import (
    TERMINAL_SIZE,
    dataset_screen,
    key_latency,
    wait_until,
    write_sharegpt_jsonl,
)


async def _run_command(pilot: Pilot[object], name: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause()
    assert CommandPalette.is_open(pilot.app)
    await pilot.press(*name)
    # The palette searches its providers asynchronously.
    for _ in range(50):
        await pilot.pause(0.02)
        palette = pilot.app.screen
        if isinstance(palette, CommandPalette) and palette.query("CommandList Option"):
            break
    await pilot.press("enter")
    await pilot.pause()


async def test_starts_on_the_dataset_screen_with_only_working_modes() -> None:
    assert [mode.name for mode in MODES] == ["dataset", "train", "runs", "export", "chat"]
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        assert app.current_mode == "dataset"
        assert isinstance(app.screen, DatasetScreen)
        welcome = app.screen.query_one("#welcome", Static)
        assert "Press o to open" in str(welcome.render())
        await pilot.press("2")
        assert isinstance(app.screen, TrainScreen)
        await pilot.press("3")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("4")
        assert isinstance(app.screen, ExportScreen)
        await pilot.press("5")
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("escape", "1")  # esc leaves the chat input, then 1 switches
        assert isinstance(app.screen, DatasetScreen)


async def test_help_lists_the_keys_and_closes() -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        for key in ("f1", "question_mark"):
            await pilot.press(key)
            assert isinstance(app.screen, HelpScreen)
            sections = dict(app.screen.sections)
            assert {"Global", "Dataset", "Records"} <= set(sections)
            dataset_keys = dict(sections["Dataset"])
            assert dataset_keys["n / ]"] == "Jump to the next invalid row"
            assert dataset_keys["N / ["] == "Jump to the previous invalid row"
            assert "esc" in dataset_keys
            await pilot.press("escape")
            assert isinstance(app.screen, DatasetScreen)


async def test_command_palette_offers_the_app_commands() -> None:
    names = {command.name for command in PALETTE_COMMANDS}
    assert {
        "Open dataset",
        "Validate dataset",
        "Convert dataset",
        "Deduplicate dataset",
        "Split dataset",
        "Dataset statistics",
        "Jump to next error",
        "Help",
        "Quit",
    } <= names
    app = GemmaTuiApp()
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        await _run_command(pilot, "Open dataset")
        assert isinstance(app.screen, FileOpenModal)
        await pilot.press("escape")
        await _run_command(pilot, "Help")
        assert isinstance(app.screen, HelpScreen)


async def test_quit_asks_first_while_a_job_runs(tmp_path: Path) -> None:
    big = write_sharegpt_jsonl(tmp_path / "big.jsonl", 300_000)
    app = GemmaTuiApp(str(big))
    async with app.run_test(size=TERMINAL_SIZE) as pilot:
        # Poll rather than pilot.pause(): that waits for an idle screen, which a busy worker
        # posting progress may not give within its timeout on a loaded machine.
        await wait_until(lambda: dataset_screen(pilot).busy)
        screen = dataset_screen(pilot)
        await key_latency(app, "q", lambda: isinstance(app.screen, ConfirmModal))
        await key_latency(app, "n", lambda: isinstance(app.screen, DatasetScreen))
        assert screen.busy  # "n": stay, the job goes on
        await key_latency(app, "q", lambda: isinstance(app.screen, ConfirmModal))
        await key_latency(app, "y", lambda: not screen.busy)
    assert app.return_code == 0
