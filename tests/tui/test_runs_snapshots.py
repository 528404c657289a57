"""Snapshots of the Runs screens (pytest-textual-snapshot) at the fixed terminal size.

Deterministic: the workspace is ``workspace/`` under a temporary folder made the current one
(so the empty state names a relative path), runs started whole days ago with fixed durations
(ages read "3 d ago"), scripted metrics, real checkpoints of a tiny adapter (fixed sizes), and
the plots flushed before the picture is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.runs_detail import RunCompareScreen, RunDetailScreen
from gemma_tui.widgets.run_plots import LossPlot, MemoryPlot
from tests.tui.conftest import TERMINAL_SIZE, settle, wait_until
from tests.tui.run_folders import dead_pid, write_run
from tests.tui.test_runs_screen import cursor_to, open_runs

SnapCompare = Callable[..., bool]


@pytest.fixture
def relative_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", "workspace")
    root = tmp_path / "workspace"
    root.mkdir()
    return root


def write_four_runs(workspace: Path) -> None:
    write_run(
        workspace,
        "cpu-smoke-20260101-120000",
        days_ago=5.2,
        duration_s=3600,
        gpu=True,
        checkpoints=(20,),
        final=True,
    )
    write_run(
        workspace,
        "rtx3060-12gb-20260102-090000",
        status="stopped",
        step=25,
        total=100,
        days_ago=4.2,
        duration_s=2000,
        offset=0.2,
        profile="rtx3060-12gb",
    )
    write_run(
        workspace,
        "rtx3060-12gb-20260103-090000",
        status="failed",
        step=12,
        total=100,
        days_ago=3.2,
        duration_s=300,
        profile="rtx3060-12gb",
        error="the loss became nan at step 13",
    )
    write_run(
        workspace,
        "h100-80gb-20260104-090000",
        status="running",
        step=7,
        total=100,
        days_ago=2.2,
        duration_s=120,
        profile="h100-80gb",
        pid=dead_pid(),
    )


async def _quiet(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    for plot in pilot.app.screen.query(LossPlot):
        plot.flush()
    for plot in pilot.app.screen.query(MemoryPlot):
        plot.flush()
    pilot.app.clear_notifications()
    await pilot.pause()
    await pilot.pause()


def test_empty_runs_list(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await open_runs(pilot)
        await _quiet(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)


def test_runs_list(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    write_four_runs(relative_workspace)

    async def run_before(pilot: Pilot[Any]) -> None:
        await open_runs(pilot)
        await _quiet(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)


def test_run_detail_with_curves(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    write_four_runs(relative_workspace)

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = await open_runs(pilot)
        cursor_to(screen, "cpu-smoke-20260101-120000")
        await pilot.press("enter")
        detail = pilot.app.screen
        assert isinstance(detail, RunDetailScreen)
        await wait_until(lambda: detail.loaded)
        await _quiet(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)


def test_overlay_of_two_runs(snap_compare: SnapCompare, relative_workspace: Path) -> None:
    write_four_runs(relative_workspace)

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = await open_runs(pilot)
        cursor_to(screen, "rtx3060-12gb-20260102-090000")
        await pilot.press("space", "space")  # this run and the one below it
        await pilot.press("c")
        assert isinstance(pilot.app.screen, RunCompareScreen)
        await _quiet(pilot)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)
