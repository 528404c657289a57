"""Snapshots of the Chat screen (pytest-textual-snapshot) at 100x30: the screen before a model
is picked, the picker over a workspace with one run (one checkpoint damaged), and the settings
dialog showing a problem as typed.

Deterministic: the workspace is ``workspace/`` under a temporary folder made the current one,
real run folders with real checkpoints of fixed names, no model loaded (a reply's numbers are
timings; ``docs/screens/chat-*.txt`` show real replies). Regenerate with
``uv run pytest tests/tui/test_chat_snapshots.py --snapshot-update`` and look at them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.chat import ChatScreen
from gemma_tui.screens.chat_modals import ChatSettingsModal, TargetPickerModal
from tests.tui.conftest import settle, wait_until
from tests.tui.run_folders import write_run

SnapCompare = Callable[..., bool]
SIZE = (100, 30)


@pytest.fixture
def relative_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", "workspace")
    root = tmp_path / "workspace"
    root.mkdir()
    run = write_run(root, "cpu-smoke-20260101-120000", days_ago=5, checkpoints=(10, 20), final=True)
    (run / "checkpoints" / "step-000020" / "adapter.npz").unlink()
    return root


async def _open_chat(pilot: Pilot[object]) -> ChatScreen:
    await settle(pilot)
    await pilot.press("5")
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    await pilot.pause()
    return screen


def test_chat_before_a_model(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await _open_chat(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=SIZE, run_before=run_before)


def test_chat_picker(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        screen = await _open_chat(pilot)
        await pilot.press("f2")
        await wait_until(lambda: screen.listed == 1)
        await pilot.pause()
        assert isinstance(pilot.app.screen, TargetPickerModal)
        await pilot.press("down")

    assert snap_compare(GemmaTuiApp(), terminal_size=SIZE, run_before=run_before)


def test_chat_settings(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await _open_chat(pilot)
        await pilot.press("f4")
        modal = pilot.app.screen
        assert isinstance(modal, ChatSettingsModal)
        modal.query_one("#set-system", Input).value = "Answer in one sentence."
        modal.query_one("#set-temperature", Input).value = "0.7"
        modal.query_one("#set-top-p", Input).value = "1.5"
        await pilot.pause()

    assert snap_compare(GemmaTuiApp(), terminal_size=SIZE, run_before=run_before)
