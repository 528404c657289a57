"""What one can chat with, and opening it: the base model, a run's checkpoint, an export.

``list_targets(workspace)`` lists everything for a picker (damaged entries included, with
``problem`` set); ``resolve_target(ref)`` turns what a user types into a :class:`ChatTarget`:

- nothing, ``default`` or ``embedded``: the embedded Gemma 3 270M;
- a run name or folder, optionally ``@STEP`` / ``@final`` (``my-run@200``): that checkpoint
  (default: the newest usable one) on its run's base model, through Keras/JAX;
- an export name or folder: its ``.litertlm`` (else ``.task``, else ``.tflite``);
- a ``.task``, ``.litertlm`` or ``.tflite`` file: that bundle on the CPU through LiteRT;
- anything else ``gemma-tui train`` takes as a model (``tiny``, a GGUF file, a Hugging Face
  folder, a keras-hub preset): that base model through Keras/JAX.

``open_target(target, OpenOptions(...))`` loads it and returns a chat :class:`Backend`. Nothing
here imports JAX until a Keras target is opened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ChatError, PipelineError
from pipeline.events import EventSink, StopCheck, ignore_event, never_stop
from pipeline.inference.chat import Backend
from pipeline.workspace import Workspace

TargetKind = Literal["base", "checkpoint", "bundle"]
BUNDLE_SUFFIXES = (".litertlm", ".task", ".tflite")
DEFAULT_REFS = ("", "default", "embedded")
Runtime = Literal["litert_lm", "interpreter"]


@dataclass(frozen=True)
class ChatTarget:
    kind: TargetKind
    ref: str
    """What ``gemma-tui chat`` takes to open it again."""
    label: str
    """One line: which model."""
    detail: str
    """A second line: base model, step, verification, size."""
    path: Path | None = None
    """The checkpoint folder or the bundle file."""
    model_source: str | None = None
    """The base model (for base and checkpoint targets)."""
    problem: str | None = None
    """Why it cannot be opened (damaged checkpoint, failed export), or None."""

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class OpenOptions:
    device: str = "auto"
    """Keras targets: "auto" (a GPU when JAX sees one), "cpu" or "gpu"."""
    dtype: str | None = None
    """Keras targets: None = bfloat16 on a GPU, float32 on the CPU. float16 is refused."""
    context_length: int | None = None
    """Tokens of prompt + reply. None: 2048 for Keras; a bundle's own KV-cache length."""
    merge: bool = False
    """Checkpoint targets: merge the LoRA adapter into the weights (faster decoding)."""
    runtime: Runtime | None = None
    """Bundles: "litert_lm" (the engine apps use; default for .task and .litertlm) or
    "interpreter" (the ai_edge_litert signature loop; the only one for .tflite)."""
    threads: int = 2


def default_target() -> ChatTarget:
    return ChatTarget(
        "base",
        "embedded",
        "Gemma 3 270M (embedded)",
        "the pretrained model shipped with gemma-tui (Q4_K_M GGUF, dequantized)",
        model_source="embedded",
    )


# --------------------------------------------------------------------------- listing


def _checkpoint_targets(run_dir: Path, workspace: Workspace) -> list[ChatTarget]:
    from pipeline.training.checkpoint import ADAPTER_NPZ, PROFILE_TOML, list_checkpoints

    out = []
    for info in reversed(list_checkpoints(run_dir)):  # final first, then newest step
        name = "final" if info.final else str(info.step)
        problem = info.problem
        if problem is None and not (info.path / ADAPTER_NPZ).is_file():
            problem = f"{ADAPTER_NPZ} is missing"
        source = _profile_source(info.path / PROFILE_TOML) if problem is None else None
        step = f"step {info.step}" if info.step is not None else "step ?"
        out.append(
            ChatTarget(
                "checkpoint",
                f"{run_dir.name}@{name}",
                f"{run_dir.name} · {'final' if info.final else 'checkpoint'} ({step})",
                f"LoRA on {source or '?'}" if problem is None else f"damaged: {problem}",
                path=info.path,
                model_source=source,
                problem=problem,
            )
        )
    del workspace
    return out


def _profile_source(profile_toml: Path) -> str:
    if not profile_toml.is_file():
        return "embedded"
    from pipeline.profiles.io import loads_profile

    try:
        profile = loads_profile(profile_toml.read_text(encoding="utf-8"))
    except (PipelineError, OSError):
        return "embedded"
    return profile.model.source or "embedded"


def _export_targets(folder: Path, manifest: dict | None) -> list[ChatTarget]:
    bundles = sorted(
        (p for p in folder.iterdir() if p.suffix in BUNDLE_SUFFIXES and p.is_file()),
        key=lambda p: BUNDLE_SUFFIXES.index(p.suffix),
    )
    out = []
    status = (manifest or {}).get("status")
    verify = (manifest or {}).get("verify") or {}
    for p in bundles:
        bits = [f"{p.stat().st_size / 1e6:.0f} MB"]
        if manifest is None:
            bits.append("no manifest")
        else:
            bits.append(f"{manifest.get('quantization', '?')}")
            bits.append("verified" if status == "ok" else f"verification {status or '?'}")
            if isinstance(verify, dict) and verify.get("summary"):
                bits.append(str(verify["summary"]))
        out.append(
            ChatTarget(
                "bundle",
                str(p),
                f"{folder.name} · {p.suffix}",
                " · ".join(bits),
                path=p,
            )
        )
    return out


def list_targets(workspace: Workspace | None = None) -> list[ChatTarget]:
    """The embedded model, every run's checkpoints (newest run first), every export's
    bundles (newest first). Damaged entries are listed with ``problem`` set."""
    from pipeline.export.job import list_exports
    from pipeline.training.runs import list_runs

    ws = workspace or Workspace.default()
    out = [default_target()]
    for run in list_runs(ws):
        out.extend(_checkpoint_targets(Path(run.path), ws))
    for folder, manifest in list_exports(ws):
        out.extend(_export_targets(folder, manifest))
    return out


# --------------------------------------------------------------------------- resolving


def _bundle_target(path: Path) -> ChatTarget:
    if path.suffix not in BUNDLE_SUFFIXES:
        raise ChatError(
            f"{path} is not a bundle gemma-tui can run (a .task, .litertlm or .tflite)",
        )
    if not path.is_file():
        raise ChatError(f"{path} does not exist", hint="Check the path (`gemma-tui exports`).")
    manifest = _manifest_of(path.parent)
    found = _export_targets(path.parent, manifest) if manifest is not None else []
    for t in found:
        if t.path == path:
            return t
    return ChatTarget("bundle", str(path), path.name, f"{path.stat().st_size / 1e6:.0f} MB", path)


def _manifest_of(folder: Path) -> dict | None:
    m = folder / "manifest.json"
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _export_folder_target(folder: Path) -> ChatTarget:
    targets = _export_targets(folder, _manifest_of(folder))
    if not targets:
        raise ChatError(
            f"the export {folder} holds no bundle (.litertlm, .task or .tflite)",
            hint="Export the run again (`gemma-tui export RUN`).",
        )
    return targets[0]


def _run_target(run_dir: Path, step: str | None, workspace: Workspace) -> ChatTarget:
    found = _checkpoint_targets(run_dir, workspace)
    if not found:
        raise ChatError(
            f"run {run_dir.name} has no checkpoint yet",
            hint="Chat with a run once it has saved a checkpoint (checkpoint_every, or when "
            "it finishes).",
        )
    if step is None:
        usable = [t for t in found if t.ok]
        if not usable:
            raise ChatError(
                f"every checkpoint of run {run_dir.name} is damaged "
                f"({'; '.join(f'{t.ref}: {t.problem}' for t in found)})"
            )
        # the newest step; final/ wins a tie (it is listed first)
        return max(usable, key=lambda t: _step_of(t))
    wanted = step.removeprefix("step-").lstrip("0") or "0"
    for t in found:
        name = t.ref.split("@", 1)[1]
        if name in (step, wanted):
            if not t.ok:
                raise ChatError(f"checkpoint {t.ref} is damaged: {t.problem}")
            return t
    names = ", ".join(t.ref.split("@", 1)[1] for t in found)
    raise ChatError(
        f"run {run_dir.name} has no checkpoint {step!r} (it has: {names})",
        hint=f"Use {run_dir.name}@final or {run_dir.name}@STEP with one of those.",
    )


def _step_of(t: ChatTarget) -> int:
    if t.path is None:
        return -1
    try:
        state = json.loads((t.path / "state.json").read_text(encoding="utf-8"))
        return int(state.get("step", -1))
    except (OSError, ValueError):
        return -1


def resolve_target(ref: str | None, workspace: Workspace | None = None) -> ChatTarget:
    """The :class:`ChatTarget` a user means by ``ref`` (see the module doc);
    :class:`ChatError` listing what exists when nothing matches."""
    from pipeline.training.runs import RUN_JSON

    ws = workspace or Workspace.default()
    text = (ref or "").strip()
    if text in DEFAULT_REFS:
        return default_target()
    name, _, step = text.partition("@")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix in BUNDLE_SUFFIXES:
            return _bundle_target(path)
        if path.is_dir() and (path / "manifest.json").is_file():
            return _export_folder_target(path)
        if path.is_dir() and ((path / RUN_JSON).is_file() or (path / "checkpoints").is_dir()):
            return _run_target(path, step or None, ws)
        if path.is_dir() and (path / "adapter.npz").is_file() and (path / "state.json").is_file():
            in_steps = path.parent.name == "checkpoints"
            return _run_target(path.parent.parent if in_steps else path.parent, path.name, ws)
    if path.suffix in BUNDLE_SUFFIXES:
        return _bundle_target(path)
    if (ws.runs_dir / name).is_dir() and "/" not in name:
        return _run_target(ws.runs_dir / name, step or None, ws)
    if (ws.exports_dir / name).is_dir() and "/" not in name:
        return _export_folder_target(ws.exports_dir / name)
    if step:
        raise ChatError(f"there is no run named {name!r} in {ws.runs_dir}", hint=_what_exists(ws))
    from pipeline.models.sources import parse_source

    try:
        src = parse_source(text)
    except PipelineError as exc:
        raise ChatError(
            f"{text!r} is not a run, an export, a bundle or a model: {exc.message}",
            hint=_what_exists(ws),
        ) from exc
    return ChatTarget("base", text, src.display, f"base model ({src.kind})", model_source=text)


def _what_exists(ws: Workspace) -> str:
    from pipeline.export.job import list_exports
    from pipeline.training.runs import list_runs

    runs = [r.name for r in list_runs(ws)[:4]]
    exports = [p.name for p, _ in list_exports(ws)[:4]]
    parts = [
        "`gemma-tui chat` takes: embedded, a run (NAME or NAME@STEP), an export, a "
        ".task/.litertlm/.tflite file, or a model source such as tiny"
    ]
    if runs:
        parts.append(f"runs: {', '.join(runs)}")
    if exports:
        parts.append(f"exports: {', '.join(exports)}")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------- opening


def open_target(
    target: ChatTarget,
    options: OpenOptions | None = None,
    *,
    workspace: Workspace | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> Backend:
    """Load ``target`` and return its chat backend (see :class:`OpenOptions`). Errors are
    :class:`ChatError` (model problems keep their own message and hint)."""
    opts = options or OpenOptions()
    if not target.ok:
        raise ChatError(f"{target.label} cannot be opened: {target.problem}")
    if opts.context_length is not None and opts.context_length < 64:
        raise ChatError(f"a context of {opts.context_length} tokens is too small (at least 64)")
    try:
        if target.kind == "bundle":
            from pipeline.inference.litert_inference import open_bundle

            assert target.path is not None
            return open_bundle(
                target.path,
                runtime=opts.runtime,
                threads=opts.threads,
                context_length=opts.context_length,
                label=target.label,
                should_stop=should_stop,
            )
        if opts.runtime is not None:
            raise ChatError(
                f"--runtime {opts.runtime} is for exported bundles; {target.label} runs on "
                "Keras/JAX"
            )
        from pipeline.inference.keras_inference import DEFAULT_CONTEXT, open_keras_backend

        return open_keras_backend(
            target.model_source or "embedded",
            checkpoint=target.path if target.kind == "checkpoint" else None,
            merge=opts.merge,
            device=opts.device,
            dtype=opts.dtype,
            context_length=opts.context_length or DEFAULT_CONTEXT,
            workspace=workspace,
            on_event=on_event,
            should_stop=should_stop,
        )
    except ChatError:
        raise
    except PipelineError as exc:
        if type(exc).__name__ == "JobCancelled":
            raise
        raise ChatError(exc.message, hint=exc.hint) from exc


def describe(target: ChatTarget) -> str:
    return f"{target.label} — {target.detail}"


__all__ = [
    "ChatTarget",
    "OpenOptions",
    "default_target",
    "describe",
    "list_targets",
    "open_target",
    "resolve_target",
]
