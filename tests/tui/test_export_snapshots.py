"""Snapshots of the Export screen: the settings step, and the report of a finished export.

Deterministic: the workspace is ``workspace/`` under a temporary folder made the current one
(paths shown are relative), real run folders with real checkpoints of fixed names, the
available memory fixed at 16 GiB, and a scripted export (:mod:`tests.tui.scripted_export`:
the pipeline's events with fixed seconds, a report computed by the pipeline on scripted ids).
Regenerate with ``uv run pytest tests/tui/test_export_snapshots.py --snapshot-update`` and
look at them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.export import ExportScreen
from pipeline.export.env import ExportEnv
from tests.tui.conftest import settle, wait_until
from tests.tui.run_folders import write_run
from tests.tui.scripted_export import ScriptedExport

SnapCompare = Callable[..., bool]
SIZE = (100, 30)
GiB = 1024**3


@pytest.fixture
def relative_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", "workspace")
    monkeypatch.setattr("pipeline.export.job.available_memory", lambda: 16 * GiB)
    root = tmp_path / "workspace"
    root.mkdir()
    write_run(root, "cpu-smoke-20260101-120000", days_ago=5, checkpoints=(10, 20), final=True)
    return root


async def _open_export(pilot: Pilot[object]) -> ExportScreen:
    await settle(pilot)
    await pilot.press("4")
    screen = pilot.app.screen
    assert isinstance(screen, ExportScreen)
    await wait_until(lambda: screen.listed >= 1 and screen.source is not None)
    await pilot.pause()
    return screen


async def _quiet(pilot: Pilot[object]) -> None:
    await settle(pilot)
    pilot.app.clear_notifications()
    await pilot.pause()


def test_export_settings(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await _open_export(pilot)
        await pilot.press("ctrl+n")
        await _quiet(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=SIZE, run_before=run_before)


def test_export_report(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        screen = await _open_export(pilot)
        screen.export_fn = ScriptedExport()
        screen.find_env_fn = lambda: ExportEnv(Path(sys.executable), "test")
        await pilot.press("f5")
        await wait_until(lambda: screen.result is not None and not screen.busy)
        await _quiet(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=SIZE, run_before=run_before)
