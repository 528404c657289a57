"""`gemma-tui train` and `gemma-tui runs`: argument errors, the event printer on scripted
events, exit codes and Ctrl+C with a scripted trainer, the runs list, and one real run on the
tiny model."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from gemma_tui.cli import main
from gemma_tui.cli_train import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    TrainPrinter,
    format_age,
    format_duration,
)
from pipeline.errors import TrainingError
from pipeline.events import (
    CheckpointSaved,
    EvalMetrics,
    LogLine,
    Progress,
    RunFinished,
    RunStarted,
    StageDone,
    StepMetrics,
)
from pipeline.training.runs import RunRecord, write_run_record
from tests.conftest import REPO
from tests.tiny_run import tiny_profile_toml, write_chat_jsonl

GiB = 1024**3


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ws"
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", str(root))
    return root


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_chat_jsonl(tmp_path / "chat.jsonl")


def _started(run_dir: str = "/ws/runs/x", start: int = 0) -> RunStarted:
    return RunStarted(
        run_dir=run_dir, total_steps=8, start_step=start, model="tiny (random)",
        train_examples=36, eval_examples=4, tokens_per_step=256,
    )  # fmt: skip


def _step(step: int, loss: float, **kw: Any) -> StepMetrics:
    return StepMetrics(
        step=step, total_steps=8, loss=loss, learning_rate=1e-3, grad_norm=0.5,
        tokens_per_s=1234.0, trained_tokens=100, elapsed_s=step * 1.0,
        eta_s=(8 - step) * 1.0, **kw,
    )  # fmt: skip


SCRIPT = [
    LogLine("Loading model tiny"),
    Progress("tokenize", 20, 40),
    StageDone("tokenize", "40 conversations", 0.2),
    _started(),
    LogLine("checkpoint step 4 -> somewhere"),  # info after the start: only in log.txt
    *[_step(i, 3.0 - i / 10, bytes_in_use=2 * GiB, peak_bytes=3 * GiB) for i in range(1, 5)],
    EvalMetrics(step=4, loss=2.5, tokens=80, seconds=0.3),
    CheckpointSaved(step=4, path="/ws/runs/x/checkpoints/step-000004", seconds=0.1),
    LogLine("the loss is noisy", "warning"),
    *[_step(i, 3.0 - i / 10, host_rss_bytes=GiB) for i in range(5, 9)],
    EvalMetrics(step=8, loss=2.6, tokens=80, seconds=0.3),
    CheckpointSaved(step=8, path="/ws/runs/x/final", seconds=0.1),
    RunFinished("finished", 8, "/ws/runs/x", final_loss=2.2, best_eval_loss=2.5),
]


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=terminal, width=160, color_system=None)
    return console, buffer


def test_printer_plain_lines() -> None:
    console, buffer = _console(terminal=False)
    with TrainPrinter(console, every_s=3600) as printer:
        for event in SCRIPT:
            printer(event)
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "Loading model tiny"
    assert lines[1] == "✓ tokenize: 40 conversations (0.2 s)"
    assert lines[2] == "Run /ws/runs/x"
    assert "36 train / 4 eval examples, 256 tokens per step, 8 steps" in lines[4]
    # the first step and the last are printed; the rest waits for every_s
    steps = [line for line in lines if line.startswith("step ")]
    assert steps == [
        "step 1/8  loss 2.9000  lr 1.00e-03  1,234 tok/s  ETA 7 s  mem 2.0 GiB (peak 3.0)",
        "step 8/8  loss 2.2000  lr 1.00e-03  1,234 tok/s  ETA 0 s  mem RSS 1.0 GiB",
    ]
    assert "eval  step 4: loss 2.5000 (80 tokens, 0.3 s)  best" in lines
    assert "eval  step 8: loss 2.6000 (80 tokens, 0.3 s)" in lines
    assert "checkpoint step 4 -> /ws/runs/x/checkpoints/step-000004 (0.1 s)" in lines
    assert "the loss is noisy" in lines
    assert not any("somewhere" in line for line in lines)
    assert printer.finished is not None and printer.finished.status == "finished"
    assert printer.last_step is not None and printer.last_step.step == 8


def test_printer_progress_bar() -> None:
    console, buffer = _console(terminal=True)
    with TrainPrinter(console) as printer:
        for event in SCRIPT:
            printer(event)
    text = buffer.getvalue()
    assert "eval  step 4: loss 2.5000" in text
    assert "checkpoint step 8 -> /ws/runs/x/final" in text
    assert "tok/s" in text and "8/8" in text  # the bar's last frame


def test_format_duration() -> None:
    assert [format_duration(s) for s in (None, 4.4, 65, 7500, 200000)] == [
        "-", "4 s", "1 min 05 s", "2 h 05 min", "2 d 7 h",
    ]  # fmt: skip
    assert [format_age(s) for s in (None, 4.4, 65, 7500, 200000)] == [
        "-", "just now", "1 min ago", "2 h ago", "2 d ago",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "x.jsonl"], "--profile is required"),
        (["train", "--profile", "cpu-smoke"], "--data FILE is required: profile cpu-smoke"),
        (["train", "--profile", "cpu-smoke", "--data", "nope.jsonl"], "nope.jsonl: no such"),
        (["train", "--profile", "cpu-smoke", "--max-steps", "0"], "--max-steps must be at least"),
        (["train", "--resume", "r", "--run-dir", "d"], "leave --run-dir out"),
    ],
)
def test_argument_errors_exit_2(
    argv: list[str], message: str, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_bad_profile_and_unknown_run_exit_2(
    workspace: Path, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--profile", "cpu-smok", "--data", str(data_file)]) == EXIT_USAGE
    assert 'did you mean "cpu-smoke"' in capsys.readouterr().err
    assert main(["train", "--resume", "nope"]) == EXIT_USAGE
    assert "No run 'nope'" in capsys.readouterr().err


class _Result:
    def __init__(self, status: str, step: int, run_dir: Path, message: str = "") -> None:
        self.status, self.step, self.total_steps = status, step, 8
        self.run_dir, self.message = run_dir, message
        self.final_loss, self.best_eval_loss = 2.2, 2.5


def _fake_trainer(monkeypatch: pytest.MonkeyPatch, behaviour: Any) -> list[dict[str, Any]]:
    import pipeline.training.trainer as trainer

    calls: list[dict[str, Any]] = []

    def train(profile: Any, **kw: Any) -> Any:
        calls.append({"profile": profile, **kw})
        return behaviour(profile, **kw)

    monkeypatch.setattr(trainer, "train", train)
    return calls


def test_train_runs_the_trainer_and_exits_0(
    monkeypatch: pytest.MonkeyPatch,
    workspace: Path,
    data_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def finish(profile: Any, *, on_event: Any, **kw: Any) -> _Result:
        for event in SCRIPT:
            on_event(event)
        return _Result("finished", 8, workspace / "runs" / "x")

    calls = _fake_trainer(monkeypatch, finish)
    argv = ["train", "--profile", "cpu-smoke", "--data", str(data_file), "--model", "tiny"]
    assert main([*argv, "--max-steps", "2"]) == EXIT_OK
    call = calls[0]
    assert call["data"] == str(data_file) and call["model"] == "tiny"
    assert call["resume"] is None and call["run_dir"] is None
    assert call["profile"].train.max_steps == 2 and call["profile"].train.warmup_steps == 1
    assert call["should_stop"]() is False
    err = capsys.readouterr().err
    assert "Memory estimate:" in err and "tiny, float32 weights" in err
    assert "eval  step 4: loss 2.5000" in err
    assert "finished at step 8/8, loss 2.2000, best eval loss 2.5000" in err


def test_devices_flag_sets_the_profile_or_the_resume(
    monkeypatch: pytest.MonkeyPatch,
    workspace: Path,
    data_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls = _fake_trainer(monkeypatch, lambda p, **kw: _Result("finished", 8, workspace / "x"))
    argv = ["train", "--profile", "cpu-smoke", "--data", str(data_file)]
    assert main([*argv, "--devices", "2"]) == EXIT_OK
    assert calls[-1]["profile"].train.devices == "2"  # a new run saves it in its profile
    assert calls[-1]["devices"] is None
    # cpu-smoke's batch of 2 does not split across 4 devices: refused before anything starts
    assert main([*argv, "--devices", "4"]) == EXIT_USAGE
    assert "does not split across 4 data-parallel devices" in capsys.readouterr().err
    assert main([*argv, "--devices", "many"]) == EXIT_USAGE
    assert "train.devices" in capsys.readouterr().err
    run = workspace / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "profile.toml").write_text(
        (Path(__file__).parents[1] / "profiles" / "cpu-smoke.toml").read_text()
    )
    assert main(["train", "--resume", str(run), "--devices", "1"]) == EXIT_OK
    assert calls[-1]["devices"] == "1" and calls[-1]["resume"] == str(run)


@pytest.mark.parametrize(
    ("outcome", "code", "text"),
    [
        ("stopped", EXIT_STOPPED, "Continue with: gemma-tui train --resume x"),
        ("failed", EXIT_FAILED, "loss became nan"),
        ("raise-after-start", EXIT_FAILED, "Out of GPU memory: out of memory at step 1"),
        ("raise-before-start", EXIT_USAGE, "Training failed: no tokenizer"),
    ],
)
def test_exit_codes(
    outcome: str,
    code: int,
    text: str,
    monkeypatch: pytest.MonkeyPatch,
    workspace: Path,
    data_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.errors import OutOfMemoryError

    def run(profile: Any, *, on_event: Any, **kw: Any) -> _Result:
        if outcome == "raise-before-start":
            raise TrainingError("no tokenizer")
        on_event(_started())
        if outcome == "raise-after-start":
            raise OutOfMemoryError("out of memory at step 1", hint="Lower train.batch_size.")
        message = "the loss became nan at step 3" if outcome == "failed" else "stopped"
        return _Result(outcome, 3, workspace / "runs" / "x", message)

    _fake_trainer(monkeypatch, run)
    assert main(["train", "--profile", "cpu-smoke", "--data", str(data_file)]) == code
    assert text in capsys.readouterr().err


def test_ctrl_c_stops_then_aborts(
    monkeypatch: pytest.MonkeyPatch,
    workspace: Path,
    data_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def stop_once(profile: Any, *, on_event: Any, should_stop: Any, **kw: Any) -> _Result:
        on_event(_started())
        os.kill(os.getpid(), signal.SIGINT)
        assert should_stop() is True
        return _Result("stopped", 3, workspace / "runs" / "x")

    _fake_trainer(monkeypatch, stop_once)
    argv = ["train", "--profile", "cpu-smoke", "--data", str(data_file)]
    assert main(argv) == EXIT_STOPPED
    err = capsys.readouterr().err
    assert "Stopping after this step and saving a checkpoint" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    def ignore_the_flag(profile: Any, *, on_event: Any, should_stop: Any, **kw: Any) -> _Result:
        on_event(_started("/ws/runs/y"))
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # raises KeyboardInterrupt here
        raise AssertionError("not reached")

    _fake_trainer(monkeypatch, ignore_the_flag)
    assert main(argv) == EXIT_STOPPED
    assert "Aborted. The last checkpoint in /ws/runs/y is kept." in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_runs_lists_the_workspace(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs"]) == EXIT_OK
    assert "No runs yet" in capsys.readouterr().out
    now = datetime.now().astimezone()
    for name, status, pid, age in (
        ("cpu-smoke-1", "finished", os.getpid(), timedelta(hours=3)),
        ("cpu-smoke-2", "running", 2**22 + 12345, timedelta(minutes=2)),  # no such process
    ):
        run = workspace / "runs" / name
        run.mkdir(parents=True)
        record = RunRecord(
            status=status,  # type: ignore[arg-type]
            pid=pid,
            started=(now - age).isoformat(timespec="seconds"),
            updated=(now - age + timedelta(seconds=90)).isoformat(timespec="seconds"),
            model="tiny",
            total_steps=8,
            step=8 if status == "finished" else 3,
            best_eval_loss=2.5 if status == "finished" else None,
        )
        write_run_record(run, record)
    assert main(["runs"]) == EXIT_OK
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("cpu-smoke")]
    assert lines[0].split()[:5] == ["cpu-smoke-2", "stopped", "(process", "gone)", "3/8"]
    assert lines[1].split()[:5] == ["cpu-smoke-1", "finished", "8/8", "2.5000", "1"]  # min 30 s
    assert lines[1].split()[8:11] == ["3", "h", "ago"]
    assert main(["runs", "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["status"]) for r in listed] == [
        ("cpu-smoke-2", "stopped (process gone)"),
        ("cpu-smoke-1", "finished"),
    ]


def test_help_imports_no_model_stack() -> None:
    code = (
        "import sys\n"
        "from gemma_tui.cli import main\n"
        "try:\n"
        "    main(['train', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('jax', 'keras', 'keras_hub') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- a real run

TINY_PROFILE = tiny_profile_toml(
    "tiny-smoke",
    learning_rate=1e-3,
    warmup_steps=1,
    max_steps=4,
    eval_every=2,
    checkpoint_every=2,
    eval_fraction=0.1,
)


@pytest.mark.slow
def test_real_run_on_the_tiny_model(workspace: Path, data_file: Path, tmp_path: Path) -> None:
    profile = tmp_path / "tiny-smoke.toml"
    profile.write_text(TINY_PROFILE)
    env = {**os.environ, "GEMMA_TUI_WORKSPACE": str(workspace), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "gemma_tui", "train", "--profile", str(profile)]
    result = subprocess.run(
        [*command, "--data", str(data_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert "Memory estimate:" in result.stderr
    assert "checkpoint step 2 ->" in result.stderr and "eval  step 2:" in result.stderr
    assert "finished at step 4/4" in result.stderr
    (run,) = (workspace / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "finished" and record["step"] == 4
    assert (run / "final" / "adapter_model.safetensors").is_file()
    assert (run / "checkpoints" / "step-000002" / "optimizer.npz").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["type"] == "train"] == [1, 2, 3, 4]
    listed = subprocess.run(
        [sys.executable, "-m", "gemma_tui", "runs", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    (summary,) = json.loads(listed.stdout)
    assert summary["name"] == run.name and summary["status"] == "finished"
