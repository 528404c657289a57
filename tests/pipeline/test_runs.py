"""Run folders: unique names, run.json, metrics.jsonl, the run lock and the runs list."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pipeline.errors import TrainingError
from pipeline.events import EvalMetrics, StepMetrics
from pipeline.training.runs import (
    GONE,
    STOP_FILE,
    MetricsTail,
    MetricsWriter,
    RunLock,
    RunRecord,
    clear_stop_request,
    describe_stop_request,
    is_locked,
    list_runs,
    new_run_dir,
    read_metrics,
    read_run_record,
    read_stop_request,
    request_stop,
    resolve_run,
    stop_requested,
    summarize_run,
    write_run_record,
)
from pipeline.workspace import Workspace
from tests.conftest import REPO


def test_new_run_dirs_are_unique(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    made: list[Path] = []
    lock = threading.Lock()

    def make() -> None:
        path = new_run_dir(ws, "rtx3060/12gb run")
        with lock:
            made.append(path)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in made}) == 8
    assert all(p.parent == tmp_path / "runs" and p.is_dir() for p in made)
    stamp = datetime.now().strftime("%Y%m%d")
    assert all(p.name.startswith(f"rtx3060-12gb-run-{stamp}-") for p in made)
    suffixes = sorted(p.name.rsplit("-", 1)[-1] for p in made)
    assert any(len(s) == 6 for s in suffixes)  # the first of a second has no -n


def test_run_record_round_trip(tmp_path: Path) -> None:
    record = RunRecord(profile="cpu-smoke", model="tiny", data="d.jsonl", total_steps=8)
    assert record.pid == os.getpid() and record.host == socket.gethostname()
    write_run_record(tmp_path, record)
    assert read_run_record(tmp_path) == record
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary left
    later = record.updated_now(step=4, best_eval_loss=float("nan"), status="failed", error="x")
    write_run_record(tmp_path, later)
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["step"] == 4 and data["best_eval_loss"] is None and data["status"] == "failed"
    data["added_by_a_newer_version"] = 1
    (tmp_path / "run.json").write_text(json.dumps(data))
    assert read_run_record(tmp_path).step == 4
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(TrainingError, match="cannot read the run record"):
        read_run_record(tmp_path)
    with pytest.raises(TrainingError, match="not a run folder"):
        read_run_record(tmp_path / "nope")


def _step(step: int, loss: float) -> StepMetrics:
    return StepMetrics(
        step=step, total_steps=8, loss=loss, learning_rate=1e-3, grad_norm=1.0,
        tokens_per_s=100.0, trained_tokens=10, elapsed_s=1.0, eta_s=2.0,
    )  # fmt: skip


def test_metrics_lines_survive_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert read_metrics(path) == [] and tail.poll() == []
    with MetricsWriter(path) as writer:
        writer.write_event(_step(1, 2.5))
        writer.write_event(EvalMetrics(step=1, loss=2.4, tokens=50, seconds=0.1))
    assert [(r["type"], r["step"], r["loss"]) for r in tail.poll()] == [
        ("train", 1, 2.5),
        ("eval", 1, 2.4),
    ]
    with path.open("a") as handle:  # a writer crashed in the middle of a line
        handle.write('{"type": "train", "step": 2, "lo')
    assert len(read_metrics(path)) == 2
    assert tail.poll() == []  # waits for the newline
    with MetricsWriter(path) as writer:  # the resumed run closes the cut line first
        writer.write({"type": "train", "step": 2, "loss": float("nan")})
    records = read_metrics(path)
    assert [r["step"] for r in records] == [1, 1, 2]
    assert records[-1]["loss"] != records[-1]["loss"]  # NaN survives
    assert [r["step"] for r in tail.poll()] == [2]


def test_run_lock_keeps_a_second_writer_out(tmp_path: Path) -> None:
    with RunLock(tmp_path) as lock:
        assert lock.held and is_locked(tmp_path)
        with pytest.raises(TrainingError) as exc:
            RunLock(tmp_path).acquire()
        assert f"in use by process {os.getpid()} on {socket.gethostname()}" in exc.value.message
    assert not is_locked(tmp_path)
    code = (
        "import sys, time\n"
        "from pipeline.training.runs import RunLock\n"
        "with RunLock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=f"in use by process {child.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        child.communicate("\n", timeout=30)
    with RunLock(tmp_path):
        pass


def _make_run(
    ws: Workspace, name: str, *, status: str, started: datetime, pid: int | None = None, **kw
) -> Path:
    path = ws.runs_dir / name
    path.mkdir(parents=True)
    stamp = started.astimezone().isoformat(timespec="seconds")
    later = (started + timedelta(minutes=5)).astimezone().isoformat(timespec="seconds")
    record = RunRecord(
        status=status,  # type: ignore[arg-type]
        pid=pid if pid is not None else os.getpid(),
        started=stamp,
        updated=later if status != "running" else datetime.now().astimezone().isoformat(),
        total_steps=8,
        **kw,
    )
    write_run_record(path, record)
    return path


def test_list_runs(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert list_runs(ws) == []
    now = datetime.now()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    _make_run(ws, "a-old", status="finished", started=now - timedelta(days=2), step=8,
              best_eval_loss=1.25)  # fmt: skip
    _make_run(ws, "b-crashed", status="running", started=now - timedelta(hours=1), pid=dead_pid)
    _make_run(ws, "c-live", status="running", started=now - timedelta(minutes=1), step=3)
    (ws.runs_dir / "d-empty").mkdir()
    (ws.runs_dir / ".hidden").mkdir()
    runs = list_runs(ws)
    assert [r.name for r in runs] == ["d-empty", "c-live", "b-crashed", "a-old"]
    by_name = {r.name: r for r in runs}
    assert by_name["a-old"].status == "finished" and by_name["a-old"].best_eval_loss == 1.25
    assert by_name["a-old"].duration_s == pytest.approx(300, abs=2)
    assert by_name["a-old"].age_s == pytest.approx(2 * 86400, abs=5)
    assert by_name["b-crashed"].status == GONE == "stopped (process gone)"
    assert by_name["c-live"].status == "running" and by_name["c-live"].step == 3
    assert by_name["d-empty"].status == "unknown"
    assert "run.json" in (by_name["d-empty"].error or "")
    assert json.loads(json.dumps(by_name["a-old"].to_dict()))["path"].endswith("a-old")


def test_resolve_run(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    path = _make_run(ws, "cpu-smoke-20260101-000000", status="finished", started=datetime.now())
    assert resolve_run("cpu-smoke-20260101-000000", ws) == path
    assert resolve_run(str(path), ws) == path
    with pytest.raises(TrainingError) as exc:
        resolve_run("nope", ws)
    assert "cpu-smoke-20260101-000000" in (exc.value.hint or "")


def test_stop_requests(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert STOP_FILE == "stop.request"
    assert not stop_requested(run) and read_stop_request(run) is None
    clear_stop_request(run)  # none there: nothing happens

    # A run that is not running (no run.json): the request names no writer.
    path = request_stop(run, reason="user asked")
    assert path == run / STOP_FILE and stop_requested(run) and stop_requested(str(run))
    assert sorted(p.name for p in run.iterdir()) == [STOP_FILE]  # written atomically
    request = read_stop_request(run)
    assert request is not None
    assert request["pid"] == os.getpid() and request["host"] == socket.gethostname()
    assert request["reason"] == "user asked" and request["run_pid"] is None
    assert datetime.fromisoformat(request["time"]).tzinfo is not None
    assert describe_stop_request(request) == (
        f"a stop request from process {os.getpid()} on {socket.gethostname()} at "
        f"{request['time']} (user asked)"
    )
    clear_stop_request(run)
    assert not stop_requested(run) and read_stop_request(run) is None

    # A running run: the request names the process run.json names, and the runs list shows it.
    write_run_record(run, RunRecord(status="running", pid=os.getpid(), total_steps=8))
    request_stop(run)
    request = read_stop_request(run)
    assert request is not None and request["reason"] == ""
    assert request["run_pid"] == os.getpid() and request["run_host"] == socket.gethostname()
    summary = summarize_run(run)
    assert summary.status == "running" and summary.stop_requested
    assert summary.pid == os.getpid() and summary.host == socket.gethostname()
    request_stop(run, reason="again")  # a second request replaces the first
    assert (read_stop_request(run) or {})["reason"] == "again"

    (run / STOP_FILE).write_text("{not json")  # damaged: still a request
    assert stop_requested(run) and read_stop_request(run) == {}
    assert describe_stop_request({}) == "a stop request"
    clear_stop_request(run)
    assert not summarize_run(run).stop_requested

    with pytest.raises(TrainingError, match="Cannot write the stop request"):
        request_stop(tmp_path / "no-such-run")
