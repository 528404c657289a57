"""Export a run's checkpoint to the edge: merge, convert, bundle, verify.

``export_run(run, checkpoint=..., options=ExportOptions(...))`` is a long job of the usual
shape (``on_event``, ``should_stop``). Its stages:

1. ``merge`` (this process, JAX): the base model in float32, the checkpoint's LoRA adapter
   merged into it (``W + (alpha/r)·A·B`` in float32), proven on one prompt (merged logits equal
   the LoRA model's) and checked to have changed the kernels where the adapter is non-zero;
2. ``reference``: the merged model's greedy replies to the verification prompts;
3. ``checkpoint``: the merged model as a Hugging Face safetensors folder (float32) with the
   tokenizer, which litert-torch's Gemma 3 loader reads; then this process lets go of the
   model before the converter starts;
4. the worker (:mod:`pipeline.export.worker`, in the export environment): ``load``,
   ``convert``, ``bundle_task``, ``bundle_litertlm``, ``verify_*``;
5. ``verify`` (here): the bundles' outputs against the reference (:mod:`.verify`), saved
   as ``verify.json`` and ``verify.md``; ``manifest.json`` records the source, settings,
   files with sizes and sha256, tool versions and timings.

Everything is built in ``<exports>/.tmp-<name>-<random>/`` and renamed to
``<exports>/<name>/`` only when complete, so a cancelled, failed or killed export leaves
nothing under the final name (its log is kept as ``<exports>/<name>.failed.log``). An export
whose verification falls below the threshold is kept, with ``"status": "failed"`` in its
manifest and the numbers in its report, and the job says so.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import json
import math
import os
import queue
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pipeline.errors import ExportError, JobCancelled, PipelineError
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
from pipeline.export.verify import (
    DEFAULT_PROMPTS,
    MIN_AGREEMENT,
    Reference,
    VerifyReport,
    build_report,
    engine_report,
    interpreter_report,
    report_markdown,
)
from pipeline.models.config import GemmaArch
from pipeline.utils.fileio import atomic_write
from pipeline.workspace import Workspace

QUANTS = tuple(MIN_AGREEMENT)
"""litert-torch's quantization recipes, in the order the wizard lists them."""
FORMATS = ("task", "litertlm", "tflite")
QUANT_LABEL = {
    "none": "f32",
    "fp16": "fp16",
    "dynamic_int8": "q8",
    "weight_only_int8": "q8wo",
    "dynamic_int4_block32": "q4b32",
    "dynamic_int4_block128": "q4b128",
}
BYTES_PER_WEIGHT = {
    "none": 4.0,
    "fp16": 2.0,
    "dynamic_int8": 1.0,
    "weight_only_int8": 1.0,
    "dynamic_int4_block32": 0.5 + 2 / 32,
    "dynamic_int4_block128": 0.5 + 2 / 128,
}
MANIFEST = "manifest.json"
VERIFY_JSON = "verify.json"
VERIFY_MD = "verify.md"
EXPORT_LOG = "export.log"
FORMAT_NAME = "gemma-tui-export"
TEMPLATE = {
    "user_prefix": "<start_of_turn>user\n",
    "user_suffix": "<end_of_turn>\n",
    "model_prefix": "<start_of_turn>model\n",
    "model_suffix": "<end_of_turn>\n",
}
"""The Gemma 3 turn template the trainer uses (``pipeline.data.formatter``); checked equal
to the formatter's constants by the tests."""
START_TOKEN = "<bos>"
STOP_TOKENS = ("<eos>", "<end_of_turn>")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExportOptions:
    quant: str = "dynamic_int8"
    formats: tuple[str, ...] = ("task", "litertlm")
    prefill_lens: tuple[int, ...] = (128,)
    """Prefill signature lengths (a longer prompt is fed in chunks of the largest)."""
    kv_len: int = 1280
    """KV-cache length: prompt plus reply can never exceed it."""
    verify: bool = True
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 32
    min_agreement: float | None = None
    """Token-agreement threshold; None takes :data:`~pipeline.export.verify.MIN_AGREEMENT`."""
    threads: int = 0
    """CPU threads for verification (0: all cores, at most 4)."""
    check_memory: bool = True
    keep_hf: bool = False
    """Keep the merged Hugging Face checkpoint in the export (``merged-hf/``)."""
    force: bool = False
    """Replace an existing export of the same name."""

    @property
    def threshold(self) -> float:
        return self.min_agreement if self.min_agreement is not None else MIN_AGREEMENT[self.quant]


def planned_stages(options: ExportOptions) -> list[str]:
    """The stages :func:`export_run` goes through with ``options``, in order (the UI lists
    them before they start)."""
    bundles = [f for f in ("task", "litertlm") if f in options.formats]
    stages = ["tools", "merge"]
    if options.verify:
        stages.append("reference")
    stages += ["checkpoint", "converter", "load", "convert"]
    stages += [f"bundle_{f}" for f in bundles]
    if options.verify:
        # the interpreter runs the .task's own contents, else the converted model itself
        stages.append("verify_task" if "task" in bundles else "verify_tflite")
        stages += [f"verify_{f}_engine" for f in bundles]
        stages.append("verify")
    return stages


def _closest(value: str, choices: Sequence[str]) -> str:
    near = [c for c in choices if value and value.lower() in c] or difflib.get_close_matches(
        value, choices, n=1
    )
    return f" Did you mean {near[0]!r}?" if near else ""


def check_options(options: ExportOptions) -> ExportOptions:
    """``options`` with lists normalised; :class:`ExportError` listing every problem."""
    problems = []
    if options.quant not in QUANTS:
        problems.append(
            f"unsupported quantization {options.quant!r}.{_closest(options.quant, QUANTS)} "
            f"Choose one of: {', '.join(QUANTS)}"
        )
    formats = tuple(
        dict.fromkeys(f.strip().lower().lstrip(".") for f in options.formats if f.strip())
    )
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        problems.append(
            f"unknown format {', '.join(map(repr, bad))}; choose from {', '.join(FORMATS)}"
        )
    if not formats:
        problems.append(f"no output format; choose from {', '.join(FORMATS)}")
    prefill = tuple(sorted({int(n) for n in options.prefill_lens}))
    if not prefill or any(n < 1 for n in prefill):
        problems.append("prefill lengths must be positive integers")
    if options.kv_len < 16:
        problems.append(f"KV-cache length {options.kv_len} is too small (at least 16)")
    elif prefill and max(prefill) > options.kv_len:
        problems.append(
            f"prefill length {max(prefill)} exceeds the KV-cache length {options.kv_len}"
        )
    if options.min_agreement is not None and not 0.0 <= options.min_agreement <= 1.0:
        problems.append(f"--min-agreement {options.min_agreement} is not between 0 and 1")
    if options.max_new_tokens < 1:
        problems.append("max_new_tokens must be at least 1")
    if options.verify and not options.prompts:
        problems.append("verification needs at least one prompt")
    if problems:
        raise ExportError("; ".join(problems))
    return replace(options, formats=formats, prefill_lens=prefill)


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class ExportEstimate:
    weights: int
    """Parameters of the converted model (the tied embedding counted once)."""
    file_bytes: int
    """Expected ``.tflite`` size (each bundle adds the 4.5 MB tokenizer)."""
    peak_ram_bytes: int
    """Expected peak memory of the converter process."""
    minutes: float
    """Rough conversion time on 2 CPU cores."""
    kv_cache_bytes: int
    """The float32 KV cache the runtime allocates for ``kv_len`` tokens."""


def parameter_count(arch: GemmaArch) -> int:
    d, n, k, h, f = (
        arch.hidden_dim,
        arch.num_query_heads,
        arch.num_key_value_heads,
        arch.head_dim,
        arch.intermediate_dim,
    )
    per_layer = d * n * h * 2 + d * k * h * 2 + 3 * d * f + 4 * d + 2 * h
    return arch.vocabulary_size * d + arch.num_layers * per_layer + d


RAM_FIXED = 1.6e9
RAM_PER_F32_BYTE = 5.0
"""Converter peak = fixed + factor x the float32 weights; fitted to the measured 1B
(20.1 GiB = 21.6 GB) and 270M (6.5 GiB) runs (bench/results/export.md)."""


def estimate_export(arch: GemmaArch, quant: str, kv_len: int = 1280) -> ExportEstimate:
    """Size, peak RAM and time of converting ``arch`` at ``quant`` (see bench/export.py)."""
    weights = parameter_count(arch)
    f32 = weights * 4
    kv = 2 * arch.num_layers * arch.num_key_value_heads * arch.head_dim * kv_len * 4
    return ExportEstimate(
        weights=weights,
        file_bytes=int(weights * BYTES_PER_WEIGHT.get(quant, 4.0)),
        peak_ram_bytes=int(RAM_FIXED + RAM_PER_F32_BYTE * f32),
        minutes=0.5 + 8.0 * weights / 1e9,
        kv_cache_bytes=kv,
    )


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def check_memory(estimate: ExportEstimate, available: int | None = None) -> None:
    """:class:`ExportError` when the machine lacks the memory the converter needs."""
    free = available if available is not None else available_memory()
    if free is None or free >= estimate.peak_ram_bytes:
        return
    raise ExportError(
        f"the converter needs about {gib(estimate.peak_ram_bytes)} of memory at its peak; "
        f"only {gib(free)} is available now",
        hint="Stop other jobs (a training run in this TUI, another export), or export on a "
        "machine with more RAM. --no-memory-check starts anyway (the converter may be "
        "killed; nothing is left half-written).",
    )


# --------------------------------------------------------------------------- source


@dataclass(frozen=True)
class ExportSource:
    run_dir: Path
    checkpoint: Path
    step: int
    final: bool
    model_source: str
    profile_name: str


def resolve_source(
    run: str | os.PathLike[str],
    checkpoint: int | str | None = None,
    workspace: Workspace | None = None,
) -> ExportSource:
    """The run and checkpoint to export: ``checkpoint`` None takes ``final/`` or else the
    newest usable step; an int or "step-000200" picks that step; "final" the final one.
    :class:`ExportError` when there is no adapter to export."""
    from pipeline.errors import TrainingError
    from pipeline.training.checkpoint import (
        ADAPTER_NPZ,
        PROFILE_TOML,
        inspect_checkpoint,
        list_checkpoints,
    )
    from pipeline.training.runs import resolve_run

    try:
        run_dir = resolve_run(run, workspace)
    except TrainingError as exc:
        raise ExportError(exc.message, hint=exc.hint) from exc
    infos = list_checkpoints(run_dir)
    if checkpoint is None:
        usable = [i for i in infos if i.ok]
        if not usable:
            problems = "; ".join(f"{i.path.name}: {i.problem}" for i in infos) or "none saved"
            raise ExportError(
                f"run {run_dir} has no checkpoint with a LoRA adapter to export ({problems})",
                hint="Train the run until it saves a checkpoint (checkpoint_every, or let it "
                "finish), then export again.",
            )
        chosen = max(usable, key=lambda i: ((i.step or 0), i.final))
        folder = chosen.path
    else:
        text = str(checkpoint)
        if text == "final":
            folder = run_dir / "final"
        else:
            digits = text.removeprefix("step-")
            if not digits.isdigit():
                raise ExportError(
                    f"--checkpoint {text!r} is not a step number, step-NNNNNN or 'final'"
                )
            from pipeline.training.checkpoint import checkpoint_dir

            folder = checkpoint_dir(run_dir, int(digits))
        if not folder.is_dir():
            names = ", ".join(i.path.name for i in infos) or "none"
            raise ExportError(
                f"run {run_dir.name} has no checkpoint {text} (it has: {names})",
                hint="Pick one of the listed checkpoints with --checkpoint.",
            )
    info = inspect_checkpoint(folder)
    if not (folder / ADAPTER_NPZ).is_file():
        raise ExportError(
            f"checkpoint {folder} has no LoRA adapter ({ADAPTER_NPZ} is missing)",
            hint="Export another checkpoint of the run (`gemma-tui runs` lists them), or "
            "train it again; a checkpoint without its adapter holds nothing to merge.",
        )
    if not info.ok:
        raise ExportError(f"checkpoint {folder} is damaged: {info.problem}")
    _check_peft_file(folder)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    source, profile_name = "embedded", ""
    if (folder / PROFILE_TOML).is_file():
        from pipeline.profiles.io import loads_profile

        try:
            profile = loads_profile((folder / PROFILE_TOML).read_text(encoding="utf-8"))
        except PipelineError as exc:
            raise ExportError(f"cannot read {folder / PROFILE_TOML}: {exc.message}") from exc
        source, profile_name = profile.model.source or "embedded", profile.name
    return ExportSource(
        run_dir=run_dir,
        checkpoint=folder,
        step=int(state["step"]),
        final=info.final,
        model_source=source,
        profile_name=profile_name,
    )


def export_name(source: ExportSource, quant: str) -> str:
    """``<run>-<step-000200|final>-<q8>``: the export folder and its bundles' file stem."""
    where = "final" if source.final else f"step{source.step}"
    return f"{source.run_dir.name}-{where}-{QUANT_LABEL[quant]}"


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    status: str
    """``ok`` or ``failed`` (verification below threshold)."""
    files: dict[str, int]
    """Bundle file name -> bytes."""
    report: VerifyReport | None
    manifest: dict[str, Any]
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- the job


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    from pipeline.models.tokenizer import BOS_ID

    text = TEMPLATE["user_prefix"] + prompt + TEMPLATE["user_suffix"] + TEMPLATE["model_prefix"]
    return [BOS_ID, *tokenizer.encode(text)]


class _Stage:
    def __init__(self, name: str, on_event: EventSink, detail: str = "") -> None:
        self.name, self.on_event, self.detail = name, on_event, detail
        self.summary = ""

    def __enter__(self) -> _Stage:
        self.start = time.perf_counter()
        self.on_event(StageStarted(self.name, self.detail))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.seconds = time.perf_counter() - self.start
            self.on_event(StageDone(self.name, self.summary or self.name, self.seconds))


def _merge_and_reference(
    source: ExportSource,
    options: ExportOptions,
    hf_dir: Path,
    workspace: Workspace,
    on_event: EventSink,
    should_stop: StopCheck,
    stages: dict[str, float],
) -> tuple[list[Reference], dict[str, Any], GemmaArch, str]:
    """Merge, reference replies and the HF checkpoint; returns (references, merge facts,
    arch, base model description). All JAX state is dropped before it returns."""
    import numpy as np

    from pipeline.export.hf_checkpoint import save_hf_checkpoint
    from pipeline.models.loader import load_model
    from pipeline.models.lora import keras_kernel_path, merge_into_backbone
    from pipeline.training.checkpoint import load_checkpoint

    with _Stage("merge", on_event, f"{source.checkpoint.name} into {source.model_source}") as st:
        try:
            ckpt = load_checkpoint(source.checkpoint)
        except PipelineError as exc:
            raise ExportError(exc.message, hint=exc.hint) from exc
        model = load_model(
            source.model_source,
            dtype="float32",
            workspace=workspace,
            on_event=on_event,
            should_stop=should_stop,
        )
        backbone, tokenizer, arch = model.backbone, model.tokenizer, model.arch
        meta = ckpt.meta
        from pipeline.models.gemma3_jax import logits, params_from_backbone

        variables = {v.path: v for v in backbone.weights}
        targets = [
            keras_kernel_path(i, t) for i in range(meta.arch.num_layers) for t in meta.targets
        ]
        before = {p: np.array(variables[p].value) for p in targets if p in variables}
        base_params = params_from_backbone(backbone)
        merge_into_backbone(backbone, ckpt.adapter, meta)
        merged_params = params_from_backbone(backbone)
        nonzero_b = {
            keras_kernel_path(i, t)
            for i in range(meta.arch.num_layers)
            for t in meta.targets
            if np.any(np.asarray(ckpt.adapter["layers"][i][t]["b"]) != 0)
        }
        changed = {
            p for p in targets if not np.array_equal(before[p], np.array(variables[p].value))
        }
        if nonzero_b - changed:
            raise ExportError(
                f"the merge left {len(nonzero_b - changed)} trained kernel(s) unchanged "
                f"(e.g. {sorted(nonzero_b - changed)[0]})"
            )
        import jax.numpy as jnp

        probe = jnp.asarray(
            [_prompt_ids(tokenizer, options.prompts[0] if options.prompts else "Hi")]
        )
        with_lora = logits(base_params, ckpt.adapter, probe, arch=arch, lora_scale=meta.scale)
        merged = logits(merged_params, None, probe, arch=arch)
        diff = float(jnp.max(jnp.abs(with_lora - merged)))
        scale = float(jnp.max(jnp.abs(with_lora))) or 1.0
        if not math.isfinite(diff) or diff > 1e-3 * max(scale, 1.0):
            raise ExportError(
                f"the merged model's logits differ from the LoRA model's by {diff:.3g} "
                f"(largest logit {scale:.3g}); the merge is wrong, nothing was exported"
            )
        merge = {
            "rank": meta.rank,
            "alpha": meta.alpha,
            "targets": list(meta.targets),
            "kernels_changed": len(changed),
            "kernels_targeted": len(targets),
            "max_abs_logit_diff_vs_lora": diff,
        }
        st.summary = (
            f"merged r{meta.rank} adapter ({len(changed)}/{len(targets)} kernels changed; "
            f"logits match the LoRA model to {diff:.1e})"
        )
        del base_params
    stages["merge"] = st.seconds
    if should_stop():
        raise JobCancelled("export cancelled after the merge")

    refs: list[Reference] = []
    if options.verify:
        from pipeline.models.tokenizer import END_OF_TURN_ID, EOS_ID
        from pipeline.training.generate import greedy_ids

        with _Stage(
            "reference", on_event, f"{len(options.prompts)} prompts, greedy, JAX float32"
        ) as st:
            for i, prompt in enumerate(options.prompts):
                ids = _prompt_ids(tokenizer, prompt)
                if len(ids) + options.max_new_tokens > options.kv_len:
                    raise ExportError(
                        f"verification prompt {i + 1} ({len(ids)} tokens) plus "
                        f"{options.max_new_tokens} new tokens exceeds the KV cache of "
                        f"{options.kv_len}"
                    )
                out = greedy_ids(
                    merged_params,
                    None,
                    ids,
                    arch=arch,
                    max_new_tokens=options.max_new_tokens,
                    stop_ids=(),
                )
                cut = next((j for j, t in enumerate(out) if t in (EOS_ID, END_OF_TURN_ID)), None)
                refs.append(
                    Reference(
                        prompt=prompt,
                        prompt_ids=tuple(ids),
                        ids=tuple(out if cut is None else out[:cut]),
                        stopped=None if cut is None else out[cut],
                    )
                )
                on_event(Progress("reference", i + 1, len(options.prompts), "prompts"))
                if should_stop():
                    raise JobCancelled("export cancelled while generating the reference replies")
            stopped = sum(r.stopped is not None for r in refs)
            st.summary = f"reference replies to {len(refs)} prompts ({stopped} ended by themselves)"
        stages["reference"] = st.seconds

    with _Stage("checkpoint", on_event, str(hf_dir)) as st:
        save_hf_checkpoint(backbone, hf_dir, tokenizer_proto=tokenizer.proto)
        size = sum(p.stat().st_size for p in hf_dir.iterdir())
        st.summary = f"merged Hugging Face checkpoint, float32, {human_bytes(size)}"
    stages["checkpoint"] = st.seconds
    description = model.description
    del model, backbone, merged_params, variables, before, ckpt
    gc.collect()
    with contextlib.suppress(Exception):
        import jax

        jax.clear_caches()
    return refs, merge, arch, description


def _check_peft_file(folder: Path) -> None:
    """The checkpoint's PEFT copy must be a readable safetensors file (a damaged one means
    the folder is damaged; exporting it would ship a fine-tune nobody can reproduce)."""
    from pipeline.errors import ModelSourceError
    from pipeline.export.hf_checkpoint import read_safetensors
    from pipeline.training.checkpoint import PEFT_WEIGHTS

    path = folder / PEFT_WEIGHTS
    if not path.exists():
        return
    try:
        read_safetensors(path)
    except ModelSourceError as exc:
        raise ExportError(
            f"checkpoint {folder} is damaged: {exc.message}",
            hint="Export another checkpoint of the run; this one was not written completely.",
        ) from exc


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


def _run_worker(
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
    _write_json(plan_path, plan)
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
                        on_event(
                            StageDone(
                                name,
                                f"{STAGE_LABEL.get(name, name)}{extra} "
                                f"(peak RSS {gib(int(event.get('peak_rss', 0)))})",
                                seconds,
                            )
                        )
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


def export_run(
    run: str | os.PathLike[str],
    *,
    checkpoint: int | str | None = None,
    options: ExportOptions | None = None,
    workspace: Workspace | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> ExportResult:
    """Merge, convert, bundle and verify one checkpoint of ``run``; see the module doc."""
    from pipeline.export.bundle import check_litertlm, check_task
    from pipeline.export.env import check_export_env, require_export_env
    from pipeline.training.memory import guess_arch

    started = time.perf_counter()
    opts = check_options(options or ExportOptions())
    ws = workspace or Workspace.default()
    source = resolve_source(run, checkpoint, ws)
    env = require_export_env()
    name = export_name(source, opts.quant)
    final = Path(out_dir) if out_dir is not None else ws.exports_dir / name
    if final.exists() and not opts.force:
        raise ExportError(
            f"{final} already exists",
            hint="Pass --force to replace it, or --out to write somewhere else.",
        )
    arch_guess = guess_arch(source.model_source)
    estimate = estimate_export(arch_guess, opts.quant, opts.kv_len) if arch_guess else None
    if opts.check_memory and estimate is not None:
        check_memory(estimate)
    on_event(
        LogLine(
            f"Exporting {source.checkpoint} ({opts.quant}, {', '.join(opts.formats)}) to {final}"
        )
    )
    with _Stage("tools", on_event, str(env.python)) as st:
        check_export_env(env)
        st.summary = f"export tools ready ({env.origin})"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{secrets.token_hex(4)}"
    work = tmp / "work"
    work.mkdir(parents=True)
    log_path = tmp / EXPORT_LOG
    stages: dict[str, float] = {"tools": st.seconds}
    failed_log = final.parent / f"{final.name}.failed.log"
    try:
        hf_dir = tmp / "merged-hf"
        refs, merge, arch, base_description = _merge_and_reference(
            source, opts, hf_dir, ws, on_event, should_stop, stages
        )
        estimate = estimate_export(arch, opts.quant, opts.kv_len)
        if opts.check_memory:
            check_memory(estimate)
        plan = {
            "hf_dir": str(hf_dir),
            "work_dir": str(work),
            "name": final.name,
            "quant": opts.quant,
            "prefill_lens": list(opts.prefill_lens),
            "kv_len": opts.kv_len,
            "formats": list(opts.formats),
            "tokenizer": str(hf_dir / "tokenizer.model"),
            "template": TEMPLATE,
            "start_token": START_TOKEN,
            "stop_tokens": list(STOP_TOKENS),
            "stop_ids": [1, 106],
            "verify": {
                "prompts": [list(r.prompt_ids) for r in refs],
                "references": [list(r.ids) for r in refs],
                "texts": [r.prompt for r in refs],
                "max_new_tokens": opts.max_new_tokens,
                "threads": opts.threads or min(os.cpu_count() or 2, 4),
            }
            if opts.verify
            else None,
        }
        versions, generated, peak = _run_worker(
            plan, tmp / "plan.json", log_path, on_event, should_stop, stages, estimate
        )
        # what the worker made
        files: dict[str, int] = {}
        for fmt in opts.formats:
            path = work / f"{final.name}.{fmt}"
            if not path.is_file():
                raise ExportError(f"the worker did not write {path.name}")
            if fmt == "task":
                check_task(path)
            elif fmt == "litertlm":
                check_litertlm(path)
            path.replace(tmp / path.name)
            files[path.name] = (tmp / path.name).stat().st_size
        report = None
        if opts.verify:
            with _Stage("verify", on_event, f"threshold {opts.threshold:.0%}") as st:
                report = _report(refs, generated, opts, hf_dir)
                _write_json(tmp / VERIFY_JSON, report.to_json())
                atomic_write(tmp / VERIFY_MD, lambda f: f.write(report_markdown(report).encode()))
                st.summary = report.summary()
            stages["verify"] = st.seconds
        if opts.keep_hf:
            files_hf = hf_dir
        else:
            shutil.rmtree(hf_dir, ignore_errors=True)
            files_hf = None
        shutil.rmtree(work, ignore_errors=True)
        (tmp / "plan.json").unlink(missing_ok=True)
        status = "ok" if report is None or report.passed else "failed"
        manifest = _manifest(
            source,
            opts,
            arch,
            base_description,
            merge,
            versions,
            files,
            tmp,
            report,
            status,
            stages,
            peak,
            estimate,
            files_hf is not None,
        )
        _write_json(tmp / MANIFEST, manifest)
        _install(tmp, final, opts.force)
        failed_log.unlink(missing_ok=True)
    except BaseException as exc:
        if log_path.exists() and not isinstance(exc, JobCancelled):
            with contextlib.suppress(OSError):
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(f"\n[gemma-tui] export failed: {exc!r}\n")
                shutil.copyfile(log_path, failed_log)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    result = ExportResult(final, status, files, report, manifest, seconds, stages)
    verdict = "ready" if status == "ok" else "FAILED verification"
    on_event(
        StageDone(
            "export",
            f"{final} {verdict}: "
            + ", ".join(f"{n} {human_bytes(b)}" for n, b in files.items())
            + (f"; {report.summary()}" if report else ""),
            seconds,
        )
    )
    return result


def _report(
    refs: list[Reference], generated: list[dict[str, Any]], opts: ExportOptions, hf_dir: Path
) -> VerifyReport:
    from pipeline.models.tokenizer import GemmaTokenizer

    tokenizer = GemmaTokenizer.from_file(hf_dir / "tokenizer.model")

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text))

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids))

    interp = [e for e in generated if e["runtime"] == "interpreter"]
    engines = [e for e in generated if e["runtime"] == "litert_lm"]
    if not interp:
        raise ExportError("the worker did not run the converted model in the interpreter")
    first = interpreter_report(
        str(interp[0]["bundle"]),
        refs,
        interp[0]["results"],
        threshold=opts.threshold,
        max_new_tokens=opts.max_new_tokens,
        decode=decode,
    )
    runtimes = [first]
    for event in engines:
        runtimes.append(
            engine_report(
                str(event["bundle"]),
                refs,
                event["results"],
                first,
                threshold=opts.threshold,
                encode=encode,
                decode=decode,
            )
        )
    wanted = {f for f in opts.formats if f in ("task", "litertlm")}
    missing = wanted - {str(e["bundle"]) for e in engines}
    if missing:
        raise ExportError(f"the worker did not run LiteRT-LM on {sorted(missing)}")
    return build_report(opts.quant, opts.threshold, opts.max_new_tokens, runtimes)


def _manifest(
    source: ExportSource,
    opts: ExportOptions,
    arch: GemmaArch,
    base_description: str,
    merge: dict[str, Any],
    versions: dict[str, Any],
    files: dict[str, int],
    folder: Path,
    report: VerifyReport | None,
    status: str,
    stages: dict[str, float],
    peak: int,
    estimate: ExportEstimate,
    kept_hf: bool,
) -> dict[str, Any]:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "format": FORMAT_NAME,
        "version": 1,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "status": status,
        "source": {
            "run": source.run_dir.name,
            "run_dir": str(source.run_dir),
            "checkpoint": source.checkpoint.name,
            "step": source.step,
            "profile": source.profile_name,
            "adapter_sha256": _sha256(source.checkpoint / "adapter.npz"),
        },
        "base_model": {
            "source": source.model_source,
            "description": base_description,
            "arch": arch.name,
        },
        "merge": merge,
        "quantization": opts.quant,
        "prefill_lengths": list(opts.prefill_lens),
        "kv_cache_length": opts.kv_len,
        "template": TEMPLATE,
        "start_token": START_TOKEN,
        "stop_tokens": list(STOP_TOKENS),
        "files": {n: {"bytes": b, "sha256": _sha256(folder / n)} for n, b in files.items()},
        "merged_hf_checkpoint": "merged-hf/" if kept_hf else None,
        "verify": None
        if report is None
        else {
            "passed": report.passed,
            "threshold": report.threshold,
            "summary": report.summary(),
            "runtimes": {
                f"{r.bundle}/{r.runtime}": {
                    r.gate_name: round(r.gate, 4),
                    "greedy token agreement": round(r.agreement, 4),
                }
                for r in report.runtimes
            },
        },
        "stages_seconds": {k: round(v, 2) for k, v in stages.items()},
        "converter_peak_rss_bytes": peak,
        "estimate": {"file_bytes": estimate.file_bytes, "peak_ram_bytes": estimate.peak_ram_bytes},
        "tools": {
            **versions,
            "gemma-tui": version("gemma-tui"),
            "jax": version("jax"),
            "keras": version("keras"),
            "keras-hub": version("keras-hub"),
        },
    }


def _install(tmp: Path, final: Path, force: bool) -> None:
    """Rename the finished temporary folder to its final name (replacing an old export
    only with ``force``; the old one is moved aside first, then deleted)."""
    old = None
    if final.exists():
        if not force:
            raise ExportError(f"{final} already exists", hint="Pass --force to replace it.")
        old = final.parent / f".old-{final.name}-{secrets.token_hex(4)}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
        }
        est = ExportEstimate(0, 0, 0, 0.0, 0)
        _, generated, _ = _run_worker(
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


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``manifest.json`` of an export folder; :class:`ExportError` if missing or damaged."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ExportError(f"{Path(folder)} is not an export (no {MANIFEST})") from exc
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ExportError(f"{path} is not a gemma-tui export manifest")
    return data


def list_exports(workspace: Workspace | None = None) -> list[tuple[Path, dict[str, Any] | None]]:
    """Export folders of the workspace, newest first, with their manifest (None if damaged)."""
    root = (workspace or Workspace.default()).exports_dir
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            out.append((p, read_manifest(p)))
        except ExportError:
            out.append((p, None))
    return out
