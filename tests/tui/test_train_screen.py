"""The Train screen: profile editing and saving, the memory estimate, and runs in this
process driven by a scripted event source (no JAX) and by the real tiny model."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, ProgressBar, Select, Static

from gemma_tui.app import GemmaTuiApp
from gemma_tui.screens.modals import ConfirmModal, ErrorModal
from gemma_tui.screens.train import (
    SaveProfileModal,
    TrainScreen,
    default_profile_name,
    estimate_lines,
)
from gemma_tui.widgets.run_monitor import RunMonitor, status_line
from pipeline.profiles import load_profile
from pipeline.training.runs import read_metrics, read_run_record
from tests.tiny_run import tiny_profile_toml, write_chat_jsonl
from tests.tui.conftest import SHAREGPT_SAMPLE, key_latency, settle, wait_until
from tests.tui.scripted_run import ScriptedTrain

GiB = 1024**3


async def _train_screen(pilot) -> TrainScreen:  # type: ignore[no-untyped-def]
    await pilot.press("2")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, TrainScreen)
    return screen


def test_default_profile_follows_the_card() -> None:
    names = ["cpu-smoke", "h100-80gb", "rtx3060-12gb", "rtx4090-24gb"]
    assert default_profile_name(None, names) == "cpu-smoke"
    assert default_profile_name(12 * GiB, names) == "rtx3060-12gb"
    assert default_profile_name(24 * GiB, names) == "rtx4090-24gb"
    assert default_profile_name(80 * GiB, names) == "h100-80gb"
    assert default_profile_name(6 * GiB, names) == "cpu-smoke"


def test_estimate_warns_with_a_fix_when_the_card_is_too_small() -> None:
    profile = load_profile("h100-80gb")
    lines, advice, fits = estimate_lines(profile, (0, 12 * GiB))
    assert fits is False
    assert advice and "fit" in advice.lower()
    assert any("GPU: 12.0 GiB" in line for line in lines)
    _, advice, fits = estimate_lines(load_profile("rtx3060-12gb"), (0, 12 * GiB))
    assert fits is True and advice is None
    lines, _, fits = estimate_lines(load_profile("cpu-smoke"), None)
    assert fits is None and "No NVIDIA GPU" in lines[-1]


def test_status_line() -> None:
    assert status_line(None, None) == "no steps yet"
    line = status_line(
        {"step": 3, "total_steps": 10, "loss": 1.23456, "learning_rate": 2e-4,
         "tokens_per_s": 12345.6, "eta_s": 125, "elapsed_s": 30},
        1.1,
    )  # fmt: skip
    assert line == (
        "step 3/10 · loss 1.2346 · best eval 1.1000 · lr 2.00e-04 · 12,346 tok/s · "
        "ETA 2 min 05 s · elapsed 30 s"
    )
    # a metrics.jsonl row of a followed run: no total or ETA in it; the run.json total and
    # the last step's time give them
    row = {"step": 20, "loss": 2.0, "step_s": 0.5}
    assert status_line(row, None) == "step 20/? · loss 2.0000 · ETA -"
    assert status_line(row, None, total_steps=80) == "step 20/80 · loss 2.0000 · ETA 30 s"


async def test_setup_prefills_the_dataset_and_checks_fields(workspace: Path) -> None:
    app = GemmaTuiApp(SHAREGPT_SAMPLE)
    async with app.run_test(size=(130, 38)) as pilot:
        await settle(pilot)
        screen = await _train_screen(pilot)
        form = screen.form
        assert screen.query_one("#profile-select", Select).value == "cpu-smoke"
        assert form.value("data.train_path") == SHAREGPT_SAMPLE
        assert form.profile is not None and form.profile.data.train_path == SHAREGPT_SAMPLE
        estimate = str(screen.query_one("#estimate", Static).render())
        assert "Memory estimate" in estimate and "gemma3_270m" in estimate

        # A bad value is marked at once and the run refuses to start.
        form.set_value("train.batch_size", "0")
        await pilot.pause()
        field = screen.query_one("#field-train--batch_size", Input)
        assert field.has_class("-invalid")
        assert form.profile is None
        assert "train.batch_size = 0: too small" in form.problems[0]
        await pilot.press("f5")
        await pilot.pause()
        assert screen.job is None
        assert "Fix the profile first" in [n.title for n in app._notifications]

        # A combination of two fields is checked too.
        form.set_value("train.batch_size", "2")
        form.set_value("train.epochs", "2")
        await pilot.pause()
        assert not field.has_class("-invalid")
        assert form.profile is None
        assert any("only one of max_steps and epochs" in p for p in form.problems)
        form.set_value("train.max_steps", "")
        await pilot.pause()
        assert form.profile is not None
        assert form.profile.train.epochs == 2 and form.profile.train.max_steps is None
        assert "Memory estimate" in str(screen.query_one("#estimate", Static).render())


async def test_save_profile_as_a_new_toml(workspace: Path) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        screen = await _train_screen(pilot)
        screen.form.set_value("lora.rank", "16")
        screen.form.set_value("data.train_path", SHAREGPT_SAMPLE)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SaveProfileModal)
        name_field = app.screen.query_one(Input)
        name_field.value = "bad name!"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SaveProfileModal)  # refused, with a reason
        name_field.value = "my-rank16"
        await pilot.press("enter")
        await pilot.pause()
        saved = workspace / "profiles" / "my-rank16.toml"
        assert saved.is_file()
        profile = load_profile(saved)
        assert profile.name == "my-rank16" and profile.lora.rank == 16
        assert profile.data.train_path == SHAREGPT_SAMPLE
        select = screen.query_one("#profile-select", Select)
        assert select.value == str(saved)
        assert screen.choices[str(saved)] == "my-rank16 (saved)"


async def test_scripted_run_shows_every_point_and_stops_with_confirmation(
    workspace: Path,
) -> None:
    script = ScriptedTrain(steps=400, step_seconds=0.01, eval_every=10)
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        screen = await _train_screen(pilot)
        screen.train_fn = script
        screen.form.set_value("data.train_path", SHAREGPT_SAMPLE)
        await pilot.pause()
        await pilot.press("f5")
        monitor = screen.query_one(RunMonitor)
        await wait_until(lambda: len(monitor.history.train_steps) >= 30)
        assert screen.busy
        setup = screen.query_one("#setup")
        assert not setup.display
        # Keys are answered while the run trains.
        latency = await key_latency(app, "f2", lambda: setup.display)
        assert latency < 0.5
        # Stopping asks first; "no" keeps training.
        await key_latency(app, "escape", lambda: isinstance(app.screen, ConfirmModal))
        await key_latency(app, "n", lambda: not isinstance(app.screen, ConfirmModal))
        assert screen.busy
        await key_latency(app, "escape", lambda: isinstance(app.screen, ConfirmModal))
        await key_latency(app, "y", lambda: not isinstance(app.screen, ConfirmModal))
        await wait_until(lambda: not screen.busy)
        await settle(pilot)
        run_dir = Path(monitor.run_dir or "")
        record = read_run_record(run_dir)
        assert record.status == "stopped" and 30 <= record.step < 400
        # Every point the run wrote is in the plots' history, once, in order.
        rows = read_metrics(run_dir / "metrics.jsonl")
        train_steps = [r["step"] for r in rows if r["type"] == "train"]
        assert monitor.history.train_steps == train_steps
        assert monitor.history.eval_steps == [r["step"] for r in rows if r["type"] == "eval"]
        assert monitor.state == "stopped"
        bar = monitor.query_one(ProgressBar)
        assert bar.total == 400 and bar.progress == record.step
        assert any(n.title == "Run stopped" for n in app._notifications)
        # The setup is editable again (F2 had shown it).
        assert setup.display
        assert not screen.query_one("#field-lora--rank", Input).disabled

        # "Resume here" from the Runs screen continues it in this process, to the end.
        script.step_seconds = 0.0
        await app.resume_run_here(run_dir)
        await wait_until(lambda: len(script.calls) == 2)
        assert script.calls[-1]["resume"] == run_dir
        await wait_until(lambda: monitor.state == "finished" and not screen.busy)
        await settle(pilot)
        assert read_run_record(run_dir).status == "finished"
        assert monitor.history.train_steps == list(range(1, 401))


async def test_failed_run_shows_the_error(workspace: Path) -> None:
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        screen = await _train_screen(pilot)
        screen.train_fn = ScriptedTrain(steps=50, fail_at=7)
        screen.form.set_value("data.train_path", SHAREGPT_SAMPLE)
        await pilot.pause()
        await pilot.press("f5")
        await wait_until(lambda: isinstance(app.screen, ErrorModal))
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert "not finite at step 7" in modal.report.message
        assert screen.monitor.state == "failed"
        assert not screen.busy


async def test_quit_while_training_stops_with_a_checkpoint_then_quits(workspace: Path) -> None:
    script = ScriptedTrain(steps=10_000, step_seconds=0.01)
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        screen = await _train_screen(pilot)
        screen.train_fn = script
        screen.form.set_value("data.train_path", SHAREGPT_SAMPLE)
        await pilot.pause()
        await pilot.press("f5")
        await wait_until(lambda: len(screen.monitor.history.train_steps) >= 5)
        await key_latency(app, "q", lambda: isinstance(app.screen, ConfirmModal))
        app.simulate_key("y")
        await wait_until(lambda: not app.is_running, timeout=30)
    run_dir = next((workspace / "runs").iterdir())
    record = read_run_record(run_dir)
    assert record.status == "stopped" and 5 <= record.step < 10_000


async def test_real_tiny_run_in_process(workspace: Path, tmp_path: Path) -> None:
    """The real trainer in the TUI's thread: the tiny model, 6 steps, then resume adds
    nothing (finished); every metrics row reaches the plots and keys stay answered."""
    profiles = workspace / "profiles"
    profiles.mkdir()
    (profiles / "tiny-tui.toml").write_text(
        tiny_profile_toml(
            "tiny-tui", eval_fraction=0.1, max_steps=6, eval_every=3, checkpoint_every=3
        )
    )
    data = write_chat_jsonl(tmp_path / "chat.jsonl")
    app = GemmaTuiApp()
    async with app.run_test(size=(130, 38)) as pilot:
        screen = await _train_screen(pilot)
        select = screen.query_one("#profile-select", Select)
        select.value = str(profiles / "tiny-tui.toml")
        form = screen.form
        await wait_until(lambda: form.profile is not None and form.profile.name == "tiny-tui")
        screen.form.set_value("data.train_path", str(data))
        await pilot.pause()
        assert screen.form.profile is not None and screen.form.profile.model.source == "tiny"
        await pilot.press("f5")
        await wait_until(lambda: screen.job is not None)
        # Help opens and closes while the model loads and trains.
        from gemma_tui.screens.help import HelpScreen

        latency = await key_latency(app, "f1", lambda: isinstance(app.screen, HelpScreen))
        assert latency < 1.0
        await key_latency(app, "escape", lambda: not isinstance(app.screen, HelpScreen))
        await wait_until(lambda: not screen.busy, timeout=240)
        await settle(pilot)
        monitor = screen.monitor
        run_dir = Path(monitor.run_dir or "")
        assert read_run_record(run_dir).status == "finished"
        assert (run_dir / "final").is_dir()
        rows = read_metrics(run_dir / "metrics.jsonl")
        assert monitor.history.train_steps == [1, 2, 3, 4, 5, 6]
        assert monitor.history.train_loss == [r["loss"] for r in rows if r["type"] == "train"]
        assert monitor.history.eval_steps == [3, 6]
        assert monitor.state == "finished"
