"""The training job: ``train(profile, ...) -> RunResult``.

Loads the base model, prepares the data, builds the jitted step and runs it, writing
everything a run needs to be explained and resumed into its run directory (layout in
docs/training-api.md): ``run.json``, ``profile.toml``, ``metrics.jsonl``, ``log.txt`` and
atomic checkpoints. The caller gets events (:mod:`pipeline.events`) and can stop the run
with ``should_stop`` (checked before every step: the run saves a checkpoint and returns
status "stopped"). Any other process can stop it the same way with a stop request file
(:func:`pipeline.training.runs.request_stop`; looked for at most every 0.2 s, also while the
model loads and the data is prepared); the run removes the file when it ends, and a stale one
when it starts.

Faults: a non-finite loss stops the run (the step that produced it changed nothing, and no
checkpoint is written over the last good one); an XLA out-of-memory becomes
:class:`~pipeline.errors.OutOfMemoryError` naming the profile values to change; Ctrl+C
(KeyboardInterrupt) saves a checkpoint and returns "stopped".
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import JobCancelled, OutOfMemoryError, PipelineError, TrainingError
from pipeline.events import (
    CheckpointSaved,
    EvalMetrics,
    Event,
    EventSink,
    LogLine,
    RunFinished,
    RunStarted,
    StepMetrics,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.profiles.schema import Profile
from pipeline.workspace import Workspace


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str
    """"finished", "stopped" or "failed"."""
    step: int
    total_steps: int
    final_loss: float | None
    best_eval_loss: float | None
    message: str = ""


# --------------------------------------------------------------------------- pytrees <-> npz


def unflatten_like(template: Any, flat: dict[str, Any]) -> Any:
    """The inverse of :func:`pipeline.training.checkpoint.flatten_arrays` given a pytree of
    the same structure (every key present, every shape as in ``template``)."""
    import jax

    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in paths:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        if key not in flat:
            raise TrainingError(f"checkpoint optimizer state has no entry {key!r}")
        value = flat[key]
        if tuple(value.shape) != tuple(leaf.shape):
            raise TrainingError(
                f"checkpoint optimizer state {key!r} has shape {tuple(value.shape)}, "
                f"expected {tuple(leaf.shape)}"
            )
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, [lf for _, lf in zip(paths, leaves, strict=False)])


# --------------------------------------------------------------------------- helpers


def total_steps_for(profile: Profile, train_rows: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``epochs`` over ``train_rows`` rows."""
    t = profile.train
    if t.max_steps is not None:
        return t.max_steps
    assert t.epochs is not None
    return max(1, math.ceil(t.epochs * train_rows / t.effective_batch_size))


def _is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _oom_error(
    profile: Profile, arch: Any, exc: BaseException, replicas: int = 1
) -> OutOfMemoryError:
    hint = (
        "Lower train.batch_size (and raise train.gradient_accumulation_steps to keep the "
        "effective batch), set train.remat = true, shorten train.sequence_length, or lower "
        "train.loss_chunk_size."
    )
    try:
        from pipeline.training.memory import estimate_memory
        from pipeline.utils.gpu import jax_memory, nvml_memory

        card = nvml_memory()
        limit = card[1] if card else jax_memory().get("bytes_limit")
        # each data-parallel replica holds its share of the batch's activations
        share = dataclasses.replace(
            profile.train, batch_size=max(1, profile.train.batch_size // replicas)
        )
        est = estimate_memory(arch, profile.lora, share, weight_dtype=profile.model.dtype)
        if limit:
            advice = est.advice(limit)
            if advice:
                hint = advice
    except Exception:
        pass
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    t = profile.train
    split = f" ({t.batch_size // replicas} per device)" if replicas > 1 else ""
    return OutOfMemoryError(
        f"out of accelerator memory at batch_size {t.batch_size}{split} x sequence_length "
        f"{t.sequence_length} (profile {profile.name}): {first}",
        hint=hint,
    )


class _Logger:
    """Forwards events to the caller and mirrors log lines into ``log.txt``."""

    def __init__(self, sink: EventSink, log_path: Path | None) -> None:
        self.sink = sink
        self.fh = log_path.open("a", encoding="utf-8") if log_path else None

    def __call__(self, event: Event) -> None:
        if self.fh is not None and isinstance(event, LogLine):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.fh.write(f"{stamp} {event.level.upper():7} {event.message}\n")
            self.fh.flush()
        self.sink(event)

    def log(self, message: str, level: str = "info") -> None:
        self(LogLine(message, level))

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class _Stop:
    """The run's stop check: the caller's ``should_stop``, or a stop request file in the run
    folder (:func:`pipeline.training.runs.request_stop`), looked for at most every
    ``every_s`` seconds (one ``stat``), so the step loop does not slow down."""

    def __init__(self, should_stop: StopCheck, rdir: Path, every_s: float = 0.2) -> None:
        self.should_stop = should_stop
        self.rdir = rdir
        self.every_s = every_s
        self.request: dict[str, Any] | None = None
        """The stop request seen (its content; {} for a damaged file); None before."""
        self._next = 0.0

    def __call__(self) -> bool:
        if self.should_stop() or self.request is not None:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.every_s
        from pipeline.training import runs

        if runs.stop_requested(self.rdir):
            request = runs.read_stop_request(self.rdir)
            if request is not None:  # None: removed since the stat
                self.request = request
                return True
        return False

    def message(self, when: str) -> str:
        """The run's message: ``stopped <when> by a stop request from process 123 on
        host ...``, or for the caller's should_stop ``stopped by request <when>``."""
        if self.request is None:
            return f"stopped by request {when}"
        from pipeline.training import runs

        return f"stopped {when} by {runs.describe_stop_request(self.request)}"


def _process_started() -> float | None:
    """This process's start time (seconds since the epoch), when psutil can tell."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return None


def _clear_stale_stop_request(rdir: Path, logger: _Logger) -> None:
    """Remove a stop request left from before this run started (its run had ended or
    crashed). One that names this very process as the run's writer, made since this process
    started, is kept: a detached run asked to stop while it was still starting up."""
    from pipeline.training import runs

    request = runs.read_stop_request(rdir)
    if request is None:
        return
    started = _process_started()
    try:
        made = (rdir / runs.STOP_FILE).stat().st_mtime
    except OSError:
        return
    mine = (
        request.get("run_pid") == os.getpid()
        and request.get("run_host") == socket.gethostname()
        and (started is None or made >= started - 1.0)
    )
    if mine:
        logger.log(f"Stop requested while starting: {runs.describe_stop_request(request)}")
        return
    runs.clear_stop_request(rdir)
    logger.log(f"Removed a stale stop request ({runs.describe_stop_request(request)})")


# --------------------------------------------------------------------------- the job


def train(
    profile: Profile,
    *,
    data: str | Path | None = None,
    model: str | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    workspace: Workspace | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
    devices: str | int | None = None,
) -> RunResult:
    """Fine-tune ``profile``'s base model with LoRA on ``data`` (or ``profile.data.train_path``).

    ``resume``: a run directory (or a run name under the workspace's runs folder) to continue
    from its latest checkpoint, with the profile saved in it. ``model`` overrides
    ``profile.model.source``. ``devices`` overrides ``train.devices`` ("auto" or a count),
    also when resuming: it changes where the work runs, not the result, so a run started on 2
    GPUs can go on on 1 and the other way round. Returns a :class:`RunResult`; raises
    :class:`PipelineError` for problems found before the run starts (bad data, no model, ...)."""
    from pipeline.training import runs
    from pipeline.training.distribute import initialize_multihost
    from pipeline.utils.gpu import configure_jax_memory

    configure_jax_memory()
    processes = initialize_multihost()
    ws = workspace or Workspace.default()
    ckpt = None
    if resume is not None:
        rdir = _process_run_dir(runs.resolve_run(resume, ws), processes)
        if runs.is_locked(rdir):  # say so before anything else (it may have no checkpoint yet)
            runs.RunLock(rdir).acquire().release()  # raises, naming the owner
        profile, ckpt = _load_resume_point(rdir, on_event)
        if devices is not None:  # where it runs, not what it computes
            profile = with_devices(profile, devices)
        record = runs.read_run_record(rdir)
        data = data or record.data
        if model is not None and model != profile.model.source:
            raise TrainingError(
                f"the run {rdir.name} was trained on model {profile.model.source!r}, not "
                f"{model!r}; a run resumes with its own model",
                hint="Drop --model, or start a new run on the other model.",
            )
    else:
        profile = new_run_profile(profile, data=data, model=model)
        data = str(profile.data.train_path)
        if devices is not None:  # before the run saves its profile
            profile = with_devices(profile, devices)
        rdir = Path(run_dir) if run_dir is not None else runs.new_run_dir(ws, profile.name)
        rdir = _process_run_dir(rdir, processes)
    rdir.mkdir(parents=True, exist_ok=True)
    with runs.RunLock(rdir):
        return _train_locked(profile, rdir, ckpt, str(data), ws, on_event, should_stop)


def with_devices(profile: Profile, devices: str | int) -> Profile:
    """``profile`` with ``train.devices`` set (checked like the profile field).

    Raises:
        ProfileValidationError: not "auto" or a count, or the batch does not split.
    """
    train = dataclasses.replace(profile.train, devices=str(devices))
    return dataclasses.replace(profile, train=train)


def _process_run_dir(rdir: Path, processes: int) -> Path:
    """The run folder of this process: ``rdir`` for process 0 (and a one-process run),
    ``rdir-p<i>`` for process i of a multi-host run (each keeps its own copy of the run:
    the same checkpoints, its own devices' memory)."""
    if processes <= 1:
        return rdir
    import jax

    index = jax.process_index()
    return rdir if index == 0 else rdir.with_name(f"{rdir.name}-p{index}")


def new_run_profile(
    profile: Profile, *, data: str | Path | None = None, model: str | None = None
) -> Profile:
    """The profile a new run trains with: ``model`` (if given) as ``model.source``, and the
    data (``data``, else the profile's ``data.train_path``; a file, a folder or a glob) as
    ``data.train_path``.

    Raises:
        TrainingError: no data given, or no such file or folder.
    """
    if model is not None:
        profile = dataclasses.replace(
            profile, model=dataclasses.replace(profile.model, source=model)
        )
    data = data if data is not None else profile.data.train_path
    if data is None:
        raise TrainingError(
            f"no training data given: profile {profile.name} has no data.train_path",
            hint="Pass --data FILE, or set data.train_path in the profile.",
        )
    if not Path(data).expanduser().exists() and not any(c in str(data) for c in "*?["):
        import os

        raise TrainingError(
            f"training data not found: {data}", hint=f"Check the path (relative to {os.getcwd()})."
        )
    return dataclasses.replace(
        profile, data=dataclasses.replace(profile.data, train_path=str(data))
    )


def _load_resume_point(rdir: Path, on_event: EventSink = ignore_event) -> tuple[Profile, Any]:
    from pipeline.profiles.io import load_profile
    from pipeline.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    prof_path = rdir / "profile.toml"
    if not prof_path.is_file():
        raise TrainingError(
            f"{rdir} has no profile.toml: it is not a gemma-tui run directory",
            hint="Pick a folder listed by `gemma-tui runs`.",
        )
    profile = load_profile(prof_path)
    latest = latest_checkpoint(rdir, on_event=on_event)
    if latest is None:
        damaged = [c for c in list_checkpoints(rdir) if not c.ok]
        if damaged:
            raise TrainingError(
                f"{rdir} has no usable checkpoint: "
                + "; ".join(f"{c.path.name} is damaged ({c.problem})" for c in damaged),
                hint="The run cannot be resumed; start a new run with its profile.toml.",
            )
        raise TrainingError(
            f"{rdir} has no checkpoint to resume from",
            hint="Start a new run; a run saves its first checkpoint at train.checkpoint_every.",
        )
    return profile, load_checkpoint(latest)


def _train_locked(
    profile: Profile,
    rdir: Path,
    ckpt: Any,
    data: str,
    ws: Workspace,
    on_event: EventSink,
    should_stop: StopCheck,
) -> RunResult:
    from pipeline.training import runs

    rdir.mkdir(parents=True, exist_ok=True)
    logger = _Logger(on_event, rdir / "log.txt")
    try:
        return _train_recorded(profile, rdir, ckpt, data, ws, logger, should_stop)
    finally:
        # The run has ended: a stop request is answered (or too late to matter).
        runs.clear_stop_request(rdir)
        logger.close()


def _train_recorded(
    profile: Profile,
    rdir: Path,
    ckpt: Any,
    data: str,
    ws: Workspace,
    logger: _Logger,
    should_stop: StopCheck,
) -> RunResult:
    from pipeline.profiles.io import save_profile
    from pipeline.training import runs

    _clear_stale_stop_request(rdir, logger)
    stop = _Stop(should_stop, rdir)
    existing = runs.read_run_record(rdir) if (rdir / "run.json").is_file() else None
    if ckpt is None or existing is None:
        # A new run (a run.json there already is the placeholder a detached launch wrote,
        # or an old run's record in a reused --run-dir: either way this run starts afresh).
        record = runs.RunRecord(
            status="running",
            profile=profile.name,
            model=profile.model.source,
            data=data,
            total_steps=profile.train.max_steps or 0,  # set once the data is counted
        )
        save_profile(profile, rdir / "profile.toml")
    else:
        record = existing.updated_now(
            status="running", pid=_pid(), host=socket.gethostname(), error=None
        )
    runs.write_run_record(rdir, record)
    state: dict[str, Any] = {"record": record}
    try:
        result = _run(profile, rdir, ckpt, data, ws, logger, stop, state)
    except KeyboardInterrupt:
        at = state["record"].step
        result = RunResult(
            rdir, "stopped", at, state["record"].total_steps, None, None,
            f"interrupted at step {at}" if at else "interrupted before the first step",
        )  # fmt: skip
    except JobCancelled:
        result = RunResult(
            rdir, "stopped", state["record"].step, state["record"].total_steps, None, None,
            stop.message("before the first step") if stop.request is not None
            else "stopped before the first step",
        )  # fmt: skip
    except PipelineError as exc:
        runs.clear_stop_request(rdir)
        runs.write_run_record(rdir, state["record"].updated_now(status="failed", error=str(exc)))
        logger.log(str(exc), "error")
        logger(RunFinished("failed", state["record"].step, str(rdir), str(exc)))
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        runs.clear_stop_request(rdir)
        runs.write_run_record(rdir, state["record"].updated_now(status="failed", error=message))
        logger.log(message, "error")
        logger(RunFinished("failed", state["record"].step, str(rdir), message))
        raise
    runs.clear_stop_request(rdir)
    runs.write_run_record(
        rdir,
        state["record"].updated_now(
            status=result.status,
            step=result.step,
            best_eval_loss=result.best_eval_loss,
            error=result.message if result.status == "failed" else None,
        ),
    )
    logger(
        RunFinished(
            result.status,
            result.step,
            str(rdir),
            result.message,
            final_loss=result.final_loss,
            best_eval_loss=result.best_eval_loss,
        )
    )
    return result


def _drop_metrics_after(path: Path, step: int) -> None:
    """On resume from ``step``: remove the metrics rows of later steps (written before a crash,
    or before a checkpoint that turned out damaged), so every step stays in the file once."""
    import json

    from pipeline.training import runs

    rows = runs.read_metrics(path)
    kept = [r for r in rows if int(r.get("step", 0)) <= step]
    if len(kept) != len(rows):
        lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in kept]
        runs.write_text_atomic(path, "".join(lines))


def _pid() -> int:
    return os.getpid()


def _run(
    profile: Profile,
    rdir: Path,
    ckpt: Any,
    data: str,
    ws: Workspace,
    logger: _Logger,
    should_stop: _Stop,
    state: dict[str, Any],
) -> RunResult:
    import jax

    from pipeline.models.gemma3_jax import params_from_backbone
    from pipeline.models.loader import load_model
    from pipeline.models.lora import AdapterMeta, init_adapter
    from pipeline.training import optimizer, runs
    from pipeline.training.batches import BatchStream, eval_batches
    from pipeline.training.checkpoint import flatten_arrays, save_checkpoint
    from pipeline.training.data import prepare_data
    from pipeline.training.distribute import device_memory, device_name, plan_placement
    from pipeline.training.step import build_train_step, stack_micro_batches
    from pipeline.utils.gpu import host_rss_bytes

    t = profile.train
    if (
        jax.default_backend() == "gpu"
        and t.precision == "float32"
        and profile.model.dtype == "float32"
    ):
        logger.log("float32 on a GPU is slow and uses twice the memory; bfloat16 is the default")
    placement = plan_placement(t)
    placement_text = placement.describe(t.batch_size)
    logger.log(f"Devices: {placement_text}")
    if placement.left_idle:
        logger.log(
            f"{len(placement.left_idle)} visible device(s) left idle: train.batch_size "
            f"{t.batch_size} does not split evenly across all {len(jax.devices())}",
            "warning",
        )
    with placement.scope():  # keras-hub creates every weight with its layout
        loaded = load_model(
            profile.model.source,
            dtype=profile.model.dtype,
            workspace=ws,
            on_event=logger,
            should_stop=should_stop,
        )
    arch = loaded.arch
    logger.log(f"Model: {loaded.description}")
    prepared = prepare_data(
        profile.data, t, loaded.tokenizer, train_path=data, workspace=ws, on_event=logger,
        should_stop=should_stop, rejects_dir=rdir,
    )  # fmt: skip
    meta = AdapterMeta(
        rank=profile.lora.rank,
        alpha=profile.lora.alpha,
        targets=tuple(profile.lora.targets),
        arch=arch,
    )
    stream = BatchStream(
        prepared.train, batch_size=t.batch_size, sequence_length=t.sequence_length,
        packing=t.packing, seed=t.seed,
    )  # fmt: skip
    if ckpt is not None:
        if not ckpt.meta.arch.same_shape(arch):
            raise TrainingError(
                f"the checkpoint in {rdir} was trained on {ckpt.meta.arch.name}, but the model "
                f"loaded is {arch.name}",
                hint="Resume with the same model source as the run used.",
            )
        total = int(ckpt.state["total_steps"])
        start = int(ckpt.step)
        adapter_np = ckpt.adapter
        stream.restore(ckpt.state["data"])
        best_eval = ckpt.state.get("best_eval_loss")
        logger.log(f"Resuming {rdir.name} at step {start} of {total}")
    else:
        total = total_steps_for(profile, stream.rows_per_epoch)
        start = 0
        adapter_np = init_adapter(meta, t.seed)
        best_eval = None
    state["record"] = dataclasses.replace(state["record"], total_steps=total, step=start)
    runs.write_run_record(rdir, state["record"])

    frozen = placement.put_frozen(params_from_backbone(loaded.backbone))
    adapter = placement.put_replicated(adapter_np)
    opt_state = optimizer.init_state(adapter)
    if ckpt is not None:
        opt_state = unflatten_like(opt_state, ckpt.opt_state)
    opt_state = placement.put_replicated(opt_state)
    step_fn = build_train_step(
        arch, meta, t, total_steps=total, compute_dtype=t.precision, placement=placement
    )
    tokens_per_step = t.effective_batch_size * t.sequence_length
    logger(
        RunStarted(
            run_dir=str(rdir),
            total_steps=total,
            start_step=start,
            model=loaded.description,
            train_examples=len(prepared.train),
            eval_examples=len(prepared.eval),
            tokens_per_step=tokens_per_step,
            devices=tuple(device_name(d) for d in placement.devices),
            placement=placement_text,
        )
    )
    metrics_path = rdir / runs.METRICS_JSONL
    if ckpt is not None:
        _drop_metrics_after(metrics_path, start)
    metrics_out = runs.MetricsWriter(metrics_path)
    saved_step: int | None = None

    def snapshot(step: int) -> None:
        """Write a checkpoint of the current (host-copied) adapter and optimizer state."""
        nonlocal saved_step
        started = time.perf_counter()
        host_adapter = placement.to_host(adapter)
        host_opt = flatten_arrays(placement.to_host(opt_state))
        extra = {
            "step": step,
            "total_steps": total,
            "data": stream.state(),
            "seed": t.seed,
            "best_eval_loss": best_eval,
            "last_loss": last_loss,
        }
        path = save_checkpoint(
            rdir, step, adapter=host_adapter, meta=meta, opt_state=host_opt, state=extra,
            profile=profile, final=step == total,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        logger(CheckpointSaved(step, str(path), seconds))
        logger.log(f"checkpoint step {step} -> {path} ({seconds:.1f} s)")
        state["record"] = state["record"].updated_now(step=step)
        runs.write_run_record(rdir, state["record"])
        saved_step = step

    def evaluate(step: int) -> float | None:
        nonlocal best_eval
        if not prepared.eval:
            return None
        started = time.perf_counter()
        loss_sum, count = 0.0, 0.0
        for batch in eval_batches(prepared.eval, t.batch_size, t.sequence_length, t.packing):
            value, n = placement.to_host(
                step_fn.eval(adapter, frozen, placement.put_batch(batch, row_axis=0))
            )
            loss_sum += float(value)
            count += float(n)
        loss = loss_sum / max(count, 1.0)
        seconds = time.perf_counter() - started
        best_eval = loss if best_eval is None else min(best_eval, loss)
        metrics_out.write(
            {"type": "eval", "step": step, "loss": loss, "tokens": int(count), "seconds": seconds}
        )
        logger(EvalMetrics(step, loss, int(count), seconds))
        state["record"] = dataclasses.replace(state["record"], best_eval_loss=best_eval)
        return loss

    last_loss: float | None = ckpt.state.get("last_loss") if ckpt is not None else None
    run_started = time.perf_counter()
    step = start
    unread: list[tuple[int, Any, float]] = []  # (step, device metrics, dispatch time)
    written = start  # the last step whose metrics row is written
    bad_step: int | None = None
    last_read = time.perf_counter()

    def read(pending: tuple[int, Any, float]) -> None:
        nonlocal last_loss, last_read, written, bad_step
        done_step, dev_metrics, _ = pending
        if done_step <= written:
            return  # read already (a Ctrl+C came after its row was written)
        m = {k: float(v) for k, v in placement.to_host(dev_metrics).items()}
        now = time.perf_counter()
        seconds = max(now - last_read, 1e-9)
        last_read = now
        if not m["finite"]:
            bad_step = done_step
            raise TrainingError(
                f"the loss became {m['loss']} (grad norm {m['grad_norm']}) at step {done_step}; "
                "the step changed nothing and the last good checkpoint is kept",
                hint="Lower train.learning_rate, check the data for empty or odd rows, or use "
                "bfloat16 rather than float16.",
            )
        last_loss = m["loss"]
        devices = device_memory(placement.local_devices)
        first = devices[0]
        rss = host_rss_bytes()
        elapsed = now - run_started
        steps_done = done_step - start
        eta = elapsed / steps_done * (total - done_step) if steps_done > 0 else None
        row = {
            "type": "train",
            "step": done_step,
            "loss": m["loss"],
            "lr": m["lr"],
            "grad_norm": m["grad_norm"],
            "tokens_per_s": m["tokens"] / seconds,
            "trained_tokens": int(m["trained_tokens"]),
            "tokens": int(m["tokens"]),
            "step_s": seconds,
            "time": time.time(),
            "bytes_in_use": first.bytes_in_use,
            "peak_bytes": first.peak_bytes,
            "gpu_used_bytes": first.gpu_used_bytes,
            "gpu_total_bytes": first.gpu_total_bytes,
            "host_rss_bytes": rss,
            "devices": [dataclasses.asdict(d) for d in devices],
        }
        metrics_out.write(row)
        written = done_step
        logger(
            StepMetrics(
                step=done_step, total_steps=total, loss=m["loss"], learning_rate=m["lr"],
                grad_norm=m["grad_norm"], tokens_per_s=m["tokens"] / seconds,
                trained_tokens=int(m["trained_tokens"]), elapsed_s=elapsed, eta_s=eta,
                bytes_in_use=first.bytes_in_use, peak_bytes=first.peak_bytes,
                gpu_used_bytes=first.gpu_used_bytes, gpu_total_bytes=first.gpu_total_bytes,
                host_rss_bytes=rss, devices=devices,
            )
        )  # fmt: skip

    def read_all() -> None:
        while unread:
            read(unread[0])
            unread.pop(0)

    def failed(exc: TrainingError) -> RunResult:
        # a non-finite step changed nothing: the run stands at the step before it
        at = bad_step - 1 if bad_step is not None else step
        state["record"] = dataclasses.replace(state["record"], step=at)
        logger.log(str(exc), "error")
        return RunResult(rdir, "failed", at, total, last_loss, best_eval, str(exc))

    status, message = "finished", ""
    try:
        while step < total:
            if should_stop():
                status, message = "stopped", should_stop.message(f"at step {step}")
                logger.log(message)
                break
            batch = placement.put_batch(
                stack_micro_batches(
                    [stream.next_batch() for _ in range(t.gradient_accumulation_steps)]
                )
            )
            try:
                adapter, opt_state, dev_metrics = step_fn.run(adapter, opt_state, frozen, batch)
            except Exception as exc:
                if _is_oom(exc):
                    raise _oom_error(profile, arch, exc, placement.data_parallel) from exc
                raise
            unread.append((step + 1, dev_metrics, time.perf_counter()))
            step += 1
            # Metrics are read one step late so the host never waits for the device, except
            # at the points below where the state must be exact.
            at_eval = t.eval_every > 0 and step % t.eval_every == 0 and step < total
            at_ckpt = t.checkpoint_every > 0 and step % t.checkpoint_every == 0 and step < total
            if at_eval or at_ckpt or step == total:
                read_all()
            while len(unread) > 1:
                read(unread[0])
                unread.pop(0)
            if at_eval:
                evaluate(step)
            if at_ckpt:
                snapshot(step)
        read_all()
    except KeyboardInterrupt:
        status, message = "stopped", f"interrupted at step {step}"
        try:
            read_all()
        except TrainingError as exc:
            return failed(exc)
    except TrainingError as exc:
        return failed(exc)
    except Exception as exc:
        # An OOM of a temporary buffer shows only when the step's result is read.
        if _is_oom(exc):
            raise _oom_error(profile, arch, exc, placement.data_parallel) from exc
        raise
    if status == "finished":
        evaluate(step)
    if status == "finished" or (step > start and step != saved_step):
        snapshot(step)
    logger.log(f"run {status} at step {step} of {total}")
    return RunResult(rdir, status, step, total, last_loss, best_eval, message)
