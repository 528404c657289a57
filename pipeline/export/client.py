"""Running the export worker (:mod:`pipeline.export.worker`) from the main environment:
the subprocess in its own process group, its JSON-line events turned into pipeline events,
everything else it prints kept in a log, cancel by killing the group, and a clear error for
a failed stage or a converter killed by a signal (the OOM killer)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ExportError, JobCancelled
from pipeline.events import (
    EventSink,
    LogLine,
    Progress,
    StageDone,
    StageStarted,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.export.options import ExportEstimate, gib, human_bytes
from pipeline.utils.fileio import atomic_write
from pipeline.workspace import Workspace


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class _Worker:
    """The worker subprocess: its marked stdout lines become events, everything else goes
    to the export log; ``should_stop`` kills its process group."""

    def __init__(self, python: Path, plan_path: Path, log: IO[str]) -> None:
        from pipeline.export.env import worker_environ

        self.log = log
        self.proc = subprocess.Popen(
            [str(python), "-m", "pipeline.export.worker", str(plan_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=worker_environ(),
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def events(self, should_stop: StopCheck, tick: float = 0.2) -> Any:
        """Yield the worker's event dicts (None every ``tick`` s when idle, for progress)."""
        from pipeline.export.worker import MARK

        while True:
            try:
                line = self.lines.get(timeout=tick)
            except queue.Empty:
                if should_stop():
                    self.kill()
                    raise JobCancelled("export cancelled; the converter was stopped") from None
                yield None
                continue
            if line is None:
                return
            if line.startswith(MARK):
                try:
                    event = json.loads(line[len(MARK) :])
                except ValueError:
                    self.log.write(line)
                    continue
                self.log.write(line[len(MARK) :])
                yield event
            else:
                self.log.write(line)
            if should_stop():
                self.kill()
                raise JobCancelled("export cancelled; the converter was stopped")


STAGE_LABEL = {
    "export-env": "create the export environment",
    "tools": "check the export tools",
    "merge": "merge the adapter",
    "reference": "reference replies (merged model)",
    "checkpoint": "write the merged checkpoint",
    "converter": "start the converter",
    "load": "load into litert-torch",
    "convert": "convert to TFLite",
    "bundle_task": "bundle .task",
    "bundle_litertlm": "bundle .litertlm",
    "verify_task": "run .task (interpreter)",
    "verify_task_engine": "run .task (LiteRT-LM)",
    "verify_litertlm_engine": "run .litertlm (LiteRT-LM)",
    "verify_tflite": "run .tflite (interpreter)",
    "verify": "compare with the merged model",
    "generate": "run the bundle (LiteRT-LM)",
}


def run_worker(
    plan: dict[str, Any],
    plan_path: Path,
    log_path: Path,
    on_event: EventSink,
    should_stop: StopCheck,
    stages: dict[str, float],
    estimate: ExportEstimate,
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Run the worker; returns (tool versions, generated results, peak RSS)."""
    from pipeline.export.env import require_export_env

    env = require_export_env()
    write_json(plan_path, plan)
    versions: dict[str, Any] = {}
    generated: list[dict[str, Any]] = []
    failure: dict[str, Any] | None = None
    peak = 0
    current: tuple[str, float] | None = None
    last_tick = 0.0
    with open(log_path, "a", encoding="utf-8") as log:
        launched = time.perf_counter()
        on_event(StageStarted("converter", str(env.python)))
        worker = _Worker(env.python, plan_path, log)
        try:
            for event in worker.events(should_stop):
                now = time.perf_counter()
                if event is None:
                    if current and now - last_tick >= 1.0:
                        last_tick = now
                        on_event(Progress(current[0], int(now - current[1]), None, "s"))
                    continue
                kind = event.get("event")
                if kind == "hello":
                    versions = dict(event.get("versions", {}))
                    tools = ", ".join(
                        f"{k} {versions[k]}" for k in ("litert-torch", "torch") if k in versions
                    )
                    on_event(
                        StageDone(
                            "converter",
                            f"converter process {event.get('pid')} ({tools})",
                            now - launched,
                        )
                    )
                elif kind == "log":
                    on_event(LogLine(str(event.get("message", ""))))
                elif kind == "generated":
                    generated.append(event)
                elif kind == "stage":
                    name = str(event["stage"])
                    status = event.get("status")
                    if status == "start":
                        current = (name, now)
                        on_event(StageStarted(name, str(event.get("detail", ""))))
                    elif status == "done":
                        current = None
                        seconds = float(event.get("seconds", 0.0))
                        stages[name] = seconds
                        peak = max(peak, int(event.get("peak_rss", 0)))
                        extra = f", {human_bytes(event['bytes'])}" if "bytes" in event else ""
                        if name in ("load", "convert"):
                            # the process's peak so far: it belongs to the converter stages
                            extra += f" (peak RSS {gib(int(event.get('peak_rss', 0)))})"
                        on_event(StageDone(name, f"{STAGE_LABEL.get(name, name)}{extra}", seconds))
                    elif status == "failed":
                        failure = event
                elif kind == "done":
                    peak = max(peak, int(event.get("peak_rss", 0)))
        except BaseException:
            worker.kill()
            raise
        code = worker.proc.wait()
    if failure is not None:
        stage = str(failure.get("stage"))
        raise ExportError(
            f"the {STAGE_LABEL.get(stage, stage)} stage failed: {failure.get('error')}",
            hint=f"The converter's full output is in {log_path.name} (kept beside the exports).",
        )
    if code != 0:
        if code < 0:
            sig = signal.Signals(-code).name
            raise ExportError(
                f"the converter was killed by {sig} during {current[0] if current else 'start-up'}"
                + (" (out of memory?)" if sig == "SIGKILL" else ""),
                hint=f"It needs about {gib(estimate.peak_ram_bytes)} of RAM at its peak; stop "
                "other jobs or use a machine with more memory. Nothing was left half-written.",
            )
        raise ExportError(
            f"the export worker exited with status {code}",
            hint=f"See {log_path.name} beside the exports for its output.",
        )
    return versions, generated, peak


def bundle_replies(
    bundle: str | os.PathLike[str],
    texts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    kv_len: int | None = None,
    workspace: Workspace | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> list[str]:
    """Greedy replies of an exported ``.task`` or ``.litertlm`` to ``texts`` on the CPU
    (LiteRT-LM's engine, in the export environment; each text a fresh conversation)."""
    from pipeline.export.bundle import check_litertlm, check_task

    path = Path(bundle)
    if path.suffix == ".task":
        check_task(path)
    elif path.suffix == ".litertlm":
        check_litertlm(path)
    else:
        raise ExportError(f"{path} is neither a .task nor a .litertlm bundle")
    if kv_len is None:
        from pipeline.export.job import read_manifest

        try:
            kv_len = int(read_manifest(path.parent).get("kv_cache_length", 1280))
        except ExportError:
            kv_len = 1280
    ws = workspace or Workspace.default()
    cache = ws.cache_dir / "litert-lm"
    with _scratch_dir(ws.exports_dir) as tmp:
        plan = {
            "mode": "generate",
            "bundle": str(path.resolve()),
            "texts": list(texts),
            "max_new_tokens": max_new_tokens,
            "kv_len": kv_len,
            "cache_dir": str(cache),
            "threads": min(os.cpu_count() or 2, 4),
        }
        est = ExportEstimate(0, 0, 0, 0.0, 0)
        _, generated, _ = run_worker(
            plan, tmp / "plan.json", tmp / "generate.log", on_event, should_stop, {}, est
        )
    if not generated:
        raise ExportError(f"LiteRT-LM returned nothing for {path.name}")
    return [str(r.get("text", "")) for r in generated[0]["results"]]


@contextlib.contextmanager
def _scratch_dir(parent: Path) -> Any:
    """A private temporary folder under ``parent`` (removed afterwards)."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-run-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
