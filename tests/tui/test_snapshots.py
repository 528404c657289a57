"""Snapshots of the main states (pytest-textual-snapshot), at a fixed terminal size.

Regenerate with ``uv run pytest tests/tui --snapshot-update`` and look at the report before
committing. Everything shown is deterministic: no clock in the header, relative paths, the
notifications cleared before the picture is taken.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import DirectoryTree, Input

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.modals import FileOpenModal
from pipeline.data.types import DatasetSpec
from tests.tui.conftest import SHAREGPT_SAMPLE, TERMINAL_SIZE, settle, wait_until

SnapCompare = Callable[..., bool]
SAMPLES = "pipeline/data/samples"


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


def test_open_modal_with_a_format_and_a_wrong_role(snap_compare: SnapCompare) -> None:
    spec = DatasetSpec(
        "sharegpt", columns={"messages": "dialog", "role": "who"}, roles={"asker": "user"}
    )

    async def run_before(pilot: Pilot[object]) -> None:
        # The tree's root is the samples folder (tracked files only), not the checkout.
        modal = FileOpenModal("pipeline/data/samples/custom.jsonl", spec, root=SAMPLES)
        await pilot.app.push_screen(modal)
        tree = modal.query_one(DirectoryTree)
        # The tree's loader worker never ends: wait for its nodes (added all at once).
        await wait_until(lambda: bool(tree.root.children))
        modal.query_one("#spec-roles", Input).value = "asker=user, bot=robot"
        for field in modal.query(Input):
            field.cursor_blink = False
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)
