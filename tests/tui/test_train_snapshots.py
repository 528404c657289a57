"""Snapshots of the Train screen's main states: set up (no run), training, finished, failed.

Runs are scripted (:mod:`tests.tui.scripted_run`): the same events as the trainer, fixed
numbers and a fixed run name, so every picture is deterministic. Regenerate with
``uv run pytest tests/tui/test_train_snapshots.py --snapshot-update`` and look at them.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.pilot import Pilot

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.modals import ErrorModal
from gemma_tui.screens.train import TrainScreen
from gemma_tui.widgets.run_plots import LossPlot, MemoryPlot
from tests.tui.conftest import SHAREGPT_SAMPLE, TERMINAL_SIZE, settle, wait_until
from tests.tui.scripted_run import ScriptedTrain

SnapCompare = Callable[..., bool]


async def _open_train(pilot: Pilot[object]) -> TrainScreen:
    await settle(pilot)
    await pilot.press("2")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, TrainScreen)
    screen.form.set_value("data.train_path", SHAREGPT_SAMPLE)
    await pilot.pause()
    return screen


async def _quiet(pilot: Pilot[object], screen: TrainScreen) -> None:
    await pilot.pause()
    for plot in (*screen.query(LossPlot), *screen.query(MemoryPlot)):
        plot.flush()
    pilot.app.clear_notifications()
    await pilot.pause()


def test_train_setup(snap_compare: SnapCompare, workspace: object) -> None:
    async def run_before(pilot: Pilot[object]) -> None:
        screen = await _open_train(pilot)
        screen.form.set_value("train.batch_size", "0")  # one field in red
        await _quiet(pilot, screen)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)


def test_train_running(snap_compare: SnapCompare, workspace: object) -> None:
    script = ScriptedTrain(steps=40, step_seconds=0.0, hold_at=24, run_name="cpu-smoke-run")

    async def run_before(pilot: Pilot[object]) -> None:
        screen = await _open_train(pilot)
        screen.train_fn = script
        await pilot.press("f5")
        await wait_until(lambda: len(screen.monitor.history.train_steps) == 24)
        await _quiet(pilot, screen)

    try:
        assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)
    finally:
        script.release.set()


def test_train_finished(snap_compare: SnapCompare, workspace: object) -> None:
    script = ScriptedTrain(steps=40, step_seconds=0.0, run_name="cpu-smoke-run")

    async def run_before(pilot: Pilot[object]) -> None:
        screen = await _open_train(pilot)
        screen.train_fn = script
        await pilot.press("f5")
        await wait_until(lambda: screen.monitor.state == "finished" and not screen.busy)
        await settle(pilot)
        await _quiet(pilot, screen)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)


def test_train_failed(snap_compare: SnapCompare, workspace: object) -> None:
    script = ScriptedTrain(steps=40, step_seconds=0.0, fail_at=17, run_name="cpu-smoke-run")

    async def run_before(pilot: Pilot[object]) -> None:
        screen = await _open_train(pilot)
        screen.train_fn = script
        await pilot.press("f5")
        await wait_until(lambda: isinstance(pilot.app.screen, ErrorModal))
        await settle(pilot)
        await _quiet(pilot, screen)

    assert snap_compare(GemmaTuiApp(), terminal_size=TERMINAL_SIZE, run_before=run_before)
