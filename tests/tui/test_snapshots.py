"""Snapshots of the main states (pytest-textual-snapshot), at a fixed terminal size.

Regenerate with ``uv run pytest tests/tui --snapshot-update`` and look at the report before
committing. Everything shown is deterministic: no clock in the header, relative paths, the
notifications cleared before the picture is taken.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot

from gemma_tui.app import GemmaTuiApp
from tests.tui.conftest import SHAREGPT_SAMPLE, TERMINAL_SIZE, settle

SnapCompare = Callable[..., bool]


async def _quiet(pilot: Pilot[object]) -> None:
    await settle(pilot)
    pilot.app.clear_notifications()
    await pilot.pause()


def test_welcome(snap_compare: SnapCompare) -> None:
    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE)


def test_help_screen(snap_compare: SnapCompare) -> None:
    assert snap_compare(GemmaTuiApp(), press=["f1"], terminal_size=TERMINAL_SIZE)


def test_opened_file_with_an_invalid_row_selected(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        await pilot.press("n")
        await _quiet(pilot)

    assert snap_compare(
        GemmaTuiApp(SHAREGPT_SAMPLE), terminal_size=TERMINAL_SIZE, run_before=run_before
    )


def test_stats_view_with_histogram(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        await settle(pilot)
        await pilot.press("s")
        await _quiet(pilot)

    assert snap_compare(
        GemmaTuiApp(SHAREGPT_SAMPLE), terminal_size=TERMINAL_SIZE, run_before=run_before
    )
