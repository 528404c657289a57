"""A scripted training run for the TUI tests: the trainer's signature and events, no JAX.

It writes a real run folder (run.json, metrics.jsonl, log.txt, profile.toml) with the same
helpers the trainer uses, emits the trainer's events in the trainer's order, and honours
``should_stop`` after each step the way the trainer does (status "stopped").
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.events import (
    CheckpointSaved,
    EvalMetrics,
    EventSink,
    LogLine,
    Progress,
    RunFinished,
    RunStarted,
    StageDone,
    StepMetrics,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.training import runs
from pipeline.training.trainer import RunResult
from pipeline.workspace import Workspace


@dataclass
class ScriptedTrain:
    """``train(profile, *, on_event, should_stop, resume=None, ...)`` playing ``steps``
    steps of ``step_seconds`` each; ``fail_at`` makes step N raise like a NaN loss."""

    steps: int = 20
    step_seconds: float = 0.02
    eval_every: int = 5
    fail_at: int | None = None
    hold_at: int | None = None
    """Wait after this step until :attr:`release` is set (or a stop is asked)."""
    run_name: str | None = None
    """A fixed run folder name (snapshots); default: the trainer's dated name."""
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    calls: list[dict[str, Any]] = field(default_factory=list)

    def loss(self, step: int) -> float:
        return 3.0 * math.exp(-step / 8) + 0.5

    def __call__(
        self,
        profile: Any,
        *,
        data: str | None = None,
        model: str | None = None,
        run_dir: str | Path | None = None,
        resume: str | Path | None = None,
        workspace: Workspace | None = None,
        on_event: EventSink = ignore_event,
        should_stop: StopCheck = never_stop,
    ) -> RunResult:
        from pipeline.errors import TrainingError
        from pipeline.profiles import save_profile

        self.calls.append({"profile": profile, "resume": resume})
        ws = workspace or Workspace.default()
        on_event(LogLine("Loading the scripted model"))
        for done in range(0, 101, 25):
            on_event(Progress("load", done, 100, "files"))
        on_event(StageDone("load", "scripted model", 0.01))
        if resume is not None:
            rdir = Path(resume)
            start = runs.read_run_record(rdir).step
        else:
            if self.run_name:
                rdir = ws.runs_dir / self.run_name
                rdir.mkdir(parents=True)
            else:
                rdir = runs.new_run_dir(ws, profile.name)
            save_profile(profile, rdir / "profile.toml")
            start = 0
        record = runs.RunRecord(
            profile=profile.name, model="scripted", data=str(profile.data.train_path),
            total_steps=self.steps, step=start,
        )  # fmt: skip
        runs.write_run_record(rdir, record)
        log = (rdir / "log.txt").open("a", encoding="utf-8")
        on_event(RunStarted(str(rdir), self.steps, start, "scripted", 100, 10, 256))
        best: float | None = None
        step = start
        with runs.MetricsWriter(rdir / "metrics.jsonl") as metrics:
            while step < self.steps:
                if should_stop():
                    break
                time.sleep(self.step_seconds)
                step += 1
                if self.fail_at == step:
                    message = f"the loss is not finite at step {step}"
                    runs.write_run_record(rdir, record.updated_now(status="failed", step=step))
                    on_event(LogLine(message, "error"))
                    on_event(RunFinished("failed", step, str(rdir), message))
                    raise TrainingError(message, hint="Lower the learning rate.")
                event = StepMetrics(
                    step=step, total_steps=self.steps, loss=self.loss(step),
                    learning_rate=1e-3 * (1 - step / self.steps), grad_norm=1.0,
                    tokens_per_s=1000.0 + step, trained_tokens=200,
                    elapsed_s=step * self.step_seconds,
                    eta_s=(self.steps - step) * self.step_seconds,
                    host_rss_bytes=(1 << 30) + step * (1 << 20),
                )  # fmt: skip
                metrics.write_event(event)
                on_event(event)
                log.write(f"step {step} loss {event.loss:.4f}\n")
                if step % self.eval_every == 0:
                    ev = EvalMetrics(step, self.loss(step) + 0.1, 500, 0.01)
                    metrics.write_event(ev)
                    on_event(ev)
                    best = ev.loss if best is None else min(best, ev.loss)
                    on_event(CheckpointSaved(step, str(rdir / "checkpoints"), 0.01))
                record = record.updated_now(step=step, best_eval_loss=best)
                runs.write_run_record(rdir, record)
                if step == self.hold_at:
                    self.holding.set()
                    while not self.release.wait(0.01) and not should_stop():
                        pass
        log.close()
        status = "finished" if step >= self.steps else "stopped"
        runs.write_run_record(rdir, record.updated_now(status=status, step=step))
        result = RunResult(rdir, status, step, self.steps, self.loss(step), best, "")
        on_event(RunFinished(status, step, str(rdir), "", self.loss(step), best))
        return result
