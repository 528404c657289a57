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
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.errors import ExportError, JobCancelled, PipelineError
from pipeline.events import (
    EventSink,
    LogLine,
    StageDone,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.export.client import STAGE_LABEL, bundle_replies, run_worker, write_json
from pipeline.export.merge import Stage, check_peft_file, merge_and_reference
from pipeline.export.options import (
    EXPORT_LOG,
    FORMAT_NAME,
    FORMATS,
    MANIFEST,
    QUANT_LABEL,
    QUANTS,
    START_TOKEN,
    STOP_TOKENS,
    TEMPLATE,
    VERIFY_JSON,
    VERIFY_MD,
    ExportEstimate,
    ExportOptions,
    available_memory,
    check_memory,
    check_options,
    estimate_export,
    gib,
    human_bytes,
    parameter_count,
    planned_stages,
)
from pipeline.export.verify import (
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

__all__ = [
    "FORMATS",
    "QUANTS",
    "QUANT_LABEL",
    "STAGE_LABEL",
    "TEMPLATE",
    "ExportEstimate",
    "ExportOptions",
    "ExportResult",
    "ExportSource",
    "available_memory",
    "bundle_replies",
    "check_memory",
    "check_options",
    "estimate_export",
    "export_name",
    "export_run",
    "gib",
    "human_bytes",
    "list_exports",
    "parameter_count",
    "planned_stages",
    "read_manifest",
    "resolve_source",
]

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
    check_peft_file(folder)
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    with Stage("tools", on_event, str(env.python)) as st:
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
        refs, merge, arch, base_description = merge_and_reference(
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
        versions, generated, peak = run_worker(
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
            with Stage("verify", on_event, f"threshold {opts.threshold:.0%}") as st:
                report = _report(refs, generated, opts, hf_dir)
                write_json(tmp / VERIFY_JSON, report.to_json())
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
        write_json(tmp / MANIFEST, manifest)
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
