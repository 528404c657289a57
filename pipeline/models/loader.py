"""Load a Gemma 3 for training or generation: a keras-hub ``Gemma3CausalLM`` and our tokenizer.

``load_model(source, *, dtype, workspace, on_event, should_stop) -> LoadedModel`` for the five
kinds of :mod:`pipeline.models.sources`:

* ``embedded`` / ``gguf``: the GGUF is dequantized (:mod:`pipeline.models.gguf_weights`) and
  mapped onto the backbone; the float32 result is cached as a Hugging Face style folder
  (``config.json``, ``model.safetensors``, ``tokenizer.model``, ``gemma_tui.json``) under
  ``workspace.cache_dir/converted/gemma3-<key>/``, keyed by the GGUF's identity (the published
  sha256 of the embedded file; path, size and mtime of any other) and :data:`FORMAT_VERSION`.
  It is written to a temporary folder and renamed; a damaged cache is deleted and rebuilt.
* ``hf``: a local ``Gemma3ForCausalLM`` folder, or ``hf://owner/name`` fetched into the
  Hugging Face cache first. keras-hub's own converter imports the ``safetensors`` package,
  which is not in this environment, so the folder is read with
  :mod:`pipeline.export.hf_checkpoint` (numpy) instead; the same code reads the GGUF cache.
* ``preset``: ``Gemma3Backbone.from_preset`` (``Gemma3CausalLM.from_preset`` would build the
  TensorFlow preprocessor), tokenizer from ``assets/tokenizer/vocabulary.spm``. A preset that
  is not in the kagglehub cache needs Kaggle credentials and network; without them this fails
  at once, naming what is missing.
* ``tiny``: ``build_backbone(ARCH_TINY, seed=...)`` and the embedded tokenizer.

The backbone of the first three is built without running keras' random initializers (a
deferred build in ``keras.StatelessScope``: 0.3 s instead of 8 s for the 270M), then every
variable is assigned. Weights are cast to ``dtype`` on load; float16 is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import JobCancelled, ModelSourceError
from pipeline.events import (
    EventSink,
    LogLine,
    Progress,
    StageDone,
    StopCheck,
    ignore_event,
    never_stop,
)
from pipeline.models.config import ARCH_TINY, GemmaArch, arch_of_backbone
from pipeline.models.sources import SUPPORTED_PRESETS, ModelSource, check_dtype, parse_source
from pipeline.models.tokenizer import GemmaTokenizer
from pipeline.workspace import Workspace

FORMAT_VERSION = 1
"""Bump when the converted-cache layout or the GGUF conversion changes."""
CONVERTED_SUBDIR = "converted"
MARKER_NAME = "gemma_tui.json"
"""Written last into a converted folder: format version, GGUF identity, arch, description."""
STALE_TEMP_S = 3600.0
"""Temporary conversion folders older than this are left-overs of a crash and are removed."""

PROBE_TIMEOUT_S = 5.0
KAGGLE_HOST = "www.kaggle.com"
HF_HOST = "huggingface.co"
HF_PATTERNS = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
]
"""What ``hf://`` downloads (weights, config, tokenizer; never other formats)."""

_OFFLINE_HINT = (
    "Offline, use the embedded model (leave the source empty), a local Gemma 3 .gguf, a local "
    "keras-hub preset folder or a Hugging Face checkpoint folder."
)


@dataclass
class LoadedModel:
    """A loaded base model and everything the trainer and the UI need to know about it."""

    causal_lm: Any
    """keras_hub ``Gemma3CausalLM(backbone, preprocessor=None)``."""
    backbone: Any
    tokenizer: GemmaTokenizer
    arch: GemmaArch
    source: ModelSource
    dtype: str
    description: str
    """One line for the UI: model, pretrained or instruct, where from, dtype."""


def load_model(
    source: str | ModelSource | None = "embedded",
    *,
    dtype: str = "bfloat16",
    workspace: Workspace | None = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
) -> LoadedModel:
    """Load ``source`` (a string for :func:`~pipeline.models.sources.parse_source`) as
    ``dtype`` ("bfloat16" or "float32").

    Emits LogLine / Progress / StageDone events; checks ``should_stop`` between stages and
    raises :class:`JobCancelled` when asked. Raises :class:`ModelSourceError` for anything
    that cannot be found, read, downloaded or run.
    """
    src = source if isinstance(source, ModelSource) else parse_source(source)
    dtype = check_dtype(dtype)
    ws = workspace or Workspace.default()
    start = time.perf_counter()
    on_event(LogLine(f"Loading {src.display} as {dtype}"))
    _check_stop(should_stop)
    if src.kind == "tiny":
        backbone, tokenizer, about = _load_tiny(src, dtype, ws, on_event)
    elif src.kind in ("embedded", "gguf"):
        backbone, tokenizer, about = _load_gguf(src, dtype, ws, on_event, should_stop)
    elif src.kind == "hf":
        backbone, tokenizer, about = _load_hf(src, dtype, on_event, should_stop)
    else:
        backbone, tokenizer, about = _load_preset(src, dtype, on_event, should_stop)
    _check_stop(should_stop)
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import keras_hub

    causal_lm = keras_hub.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)
    arch = arch_of_backbone(backbone)
    description = f"{about}; {dtype}"
    on_event(StageDone("model", description, time.perf_counter() - start))
    return LoadedModel(causal_lm, backbone, tokenizer, arch, src, dtype, description)


def _check_stop(should_stop: StopCheck) -> None:
    if should_stop():
        raise JobCancelled("Model loading was cancelled.")


def _size_label(arch: GemmaArch) -> str:
    labels = {"gemma3_270m": "270M", "gemma3_1b": "1B", "tiny": "tiny"}
    if arch.name in labels:
        return labels[arch.name]
    return f"{arch.parameter_count() / 1e6:,.0f}M-parameter"


def _variant(instruct: bool) -> str:
    return "instruct" if instruct else "pretrained, not instruct"


# --------------------------------------------------------------------------- tiny


def _load_tiny(
    src: ModelSource, dtype: str, ws: Workspace, on_event: EventSink
) -> tuple[Any, GemmaTokenizer, str]:
    from pipeline.models.config import build_backbone
    from pipeline.models.tokenizer import load_tokenizer

    start = time.perf_counter()
    backbone = build_backbone(ARCH_TINY, dtype=dtype, seed=int(src.location))
    on_event(StageDone("weights", f"random tiny backbone (seed {src.location})", _since(start)))
    tokenizer = load_tokenizer(ws, on_event=on_event)
    return backbone, tokenizer, f"tiny random Gemma 3 (seed {src.location}, untrained)"


def _since(start: float) -> float:
    return time.perf_counter() - start


# --------------------------------------------------------------------------- GGUF


def gguf_identity(path: Path, *, embedded: bool) -> str:
    """What a converted cache is keyed by: the embedded file's published sha256, or the
    resolved path, size and mtime of any other GGUF."""
    if embedded:
        from pipeline.models.embedded import embedded_gguf_sha256

        return f"sha256:{embedded_gguf_sha256()}"
    st = path.stat()
    return f"file:{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def converted_path(workspace: Workspace, identity: str) -> Path:
    """The cache folder of the GGUF with ``identity`` (the key also covers the tokenizer
    module's format version, since the folder holds a tokenizer proto it built)."""
    from pipeline.models.tokenizer import FORMAT_VERSION as TOKENIZER_FORMAT

    salt = f"converted-v{FORMAT_VERSION}-tokenizer-v{TOKENIZER_FORMAT}"
    key = hashlib.sha256(f"{salt}|{identity}".encode()).hexdigest()[:20]
    return workspace.cache_dir / CONVERTED_SUBDIR / f"gemma3-{key}"


def _load_gguf(
    src: ModelSource,
    dtype: str,
    ws: Workspace,
    on_event: EventSink,
    should_stop: StopCheck,
) -> tuple[Any, GemmaTokenizer, str]:
    embedded = src.kind == "embedded"
    if embedded:
        from pipeline.models.embedded import embedded_gguf_path

        path = embedded_gguf_path(ws, on_event=on_event)
    else:
        path = Path(src.location)
        if not path.is_file():
            raise ModelSourceError(
                f"GGUF file not found: {path}", hint="Check the path, or use the embedded model."
            )
    identity = gguf_identity(path, embedded=embedded)
    folder = converted_path(ws, identity)
    marker = _read_marker(folder, identity, on_event)
    if marker is not None:
        try:
            return _load_converted(folder, marker, dtype, on_event, should_stop)
        except ModelSourceError as exc:
            on_event(
                LogLine(f"Rebuilding the damaged model cache {folder}: {exc.message}", "warning")
            )
            _remove_tree(folder)
    return _convert_gguf(path, embedded, identity, folder, dtype, ws, on_event, should_stop)


def _read_marker(folder: Path, identity: str, on_event: EventSink) -> dict[str, Any] | None:
    """The marker of a complete cache folder for ``identity``, or None (a damaged folder is
    removed)."""
    if not folder.exists():
        return None
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
        ok = (
            isinstance(marker, dict)
            and marker.get("format_version") == FORMAT_VERSION
            and marker.get("identity") == identity
            and isinstance(marker.get("about"), str)
            and GemmaArch.from_dict(marker["arch"]).num_layers > 0
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ok, marker = False, None
    if ok:
        return marker
    on_event(LogLine(f"Rebuilding the incomplete model cache {folder}", "warning"))
    _remove_tree(folder)
    return None


def _load_converted(
    folder: Path,
    marker: Mapping[str, Any],
    dtype: str,
    on_event: EventSink,
    should_stop: StopCheck,
) -> tuple[Any, GemmaTokenizer, str]:
    from pipeline.export.hf_checkpoint import read_hf_checkpoint

    start = time.perf_counter()
    arch = GemmaArch.from_dict(marker["arch"])
    state, found = read_hf_checkpoint(folder)
    if not found.same_shape(arch):
        raise ModelSourceError(f"{folder}: config.json does not match {MARKER_NAME}")
    tokenizer = _tokenizer_from_proto((folder / "tokenizer.model").read_bytes(), folder, on_event)
    on_event(StageDone("cache", f"read {folder.name} (float32)", _since(start)))
    _check_stop(should_stop)
    backbone = _backbone_from_state(state, arch, dtype, str(folder), on_event)
    return backbone, tokenizer, str(marker["about"])


def _convert_gguf(
    path: Path,
    embedded: bool,
    identity: str,
    folder: Path,
    dtype: str,
    ws: Workspace,
    on_event: EventSink,
    should_stop: StopCheck,
) -> tuple[Any, GemmaTokenizer, str]:
    from pipeline.models.gguf_weights import (
        check_gguf_tensors,
        gemma3_arch,
        gguf_info,
        hf_tensors,
        read_gguf,
    )
    from pipeline.models.tokenizer import load_tokenizer

    start = time.perf_counter()
    gguf = read_gguf(path)
    arch = gemma3_arch(gguf)
    check_gguf_tensors(gguf, arch)
    info = gguf_info(gguf)
    size = _size_label(arch) if arch.name != "custom" else info.size_label or _size_label(arch)
    if embedded:
        about = (
            f"Gemma 3 {size} ({_variant(False)}): the embedded {info.file_type} GGUF, dequantized"
        )
    else:
        about = (
            f"{info.name} ({_variant(info.instruct)}): {path.name}, {info.file_type} dequantized"
        )
    on_event(
        StageDone(
            "gguf",
            f"{path.name}: Gemma 3 {size}, {len(gguf.tensors)} tensors, {info.file_type}",
            _since(start),
        )
    )
    _check_stop(should_stop)
    tokenizer = load_tokenizer(ws, gguf=None if embedded else path, on_event=on_event)
    if tokenizer.vocab_size > arch.vocabulary_size:
        raise ModelSourceError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} pieces but the embedding only "
            f"{arch.vocabulary_size} rows",
            hint="The GGUF is inconsistent; use an unmodified Gemma 3 GGUF.",
        )
    _check_stop(should_stop)

    start = time.perf_counter()
    on_event(LogLine(f"Dequantizing {path.name} (once; later loads read the cache)"))
    state: dict[str, np.ndarray] = {}
    total = len(gguf.tensors)
    for name, value in hf_tensors(gguf, arch):
        state[name] = value
        on_event(Progress("dequantize", len(state), total, "tensors"))
        _check_stop(should_stop)
    on_event(StageDone("dequantize", f"{len(state)} tensors to float32", _since(start)))

    marker = {
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "source": str(path),
        "arch": arch.to_dict(),
        "about": about,
        "gguf": {
            "name": info.name,
            "size_label": info.size_label,
            "file_type": info.file_type,
            "instruct": info.instruct,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_converted(folder, state, arch, tokenizer.proto, marker, on_event)
    _check_stop(should_stop)
    backbone = _backbone_from_state(state, arch, dtype, str(path), on_event)
    return backbone, tokenizer, about


def _write_converted(
    folder: Path,
    state: Mapping[str, np.ndarray],
    arch: GemmaArch,
    proto: bytes,
    marker: Mapping[str, Any],
    on_event: EventSink,
) -> None:
    """Write the converted cache atomically (temp folder, then rename). A failure (disk full,
    read-only workspace) is logged: the model still loads, the next load converts again."""
    from pipeline.export.hf_checkpoint import hf_config, write_safetensors

    start = time.perf_counter()
    parent = folder.parent
    tmp: Path | None = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=parent))
        write_safetensors(tmp / "model.safetensors", state, metadata={"format": "pt"})
        _write_file(tmp / "config.json", _json_bytes(hf_config(arch, "float32")))
        _write_file(tmp / "tokenizer.model", proto)
        _write_file(tmp / MARKER_NAME, _json_bytes(marker))
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / MARKER_NAME).is_file():
                raise
            # Another process converted the same file meanwhile: keep its folder.
        else:
            tmp = None
        on_event(StageDone("cache", f"wrote {folder} (float32)", _since(start)))
    except Exception as exc:
        on_event(LogLine(f"Could not write the model cache {folder}: {exc}", "warning"))
    finally:
        if tmp is not None:
            _remove_tree(tmp)


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _write_file(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _remove_stale_temps(parent: Path) -> None:
    now = time.time()
    for child in parent.glob(".gemma3-*.tmp"):
        try:
            if now - child.stat().st_mtime > STALE_TEMP_S:
                _remove_tree(child)
        except OSError:
            pass


# --------------------------------------------------------------------------- backbone


def _backbone_from_state(
    state: dict[str, np.ndarray],
    arch: GemmaArch,
    dtype: str,
    where: str,
    on_event: EventSink,
) -> Any:
    """A ``Gemma3Backbone`` of ``arch`` holding the Hugging Face tensors ``state``."""
    from pipeline.export.hf_checkpoint import assign_weights, keras_weights_from_hf

    start = time.perf_counter()
    try:
        weights = keras_weights_from_hf(state, arch)
    except ModelSourceError as exc:
        raise ModelSourceError(
            f"{where}: {exc.message}",
            hint=exc.hint or "Only plain Gemma 3 text checkpoints (270M, 1B) are supported.",
        ) from exc
    state.clear()  # the caller's dict: drop the float32 copies not shared with `weights`
    backbone = _empty_backbone(arch, dtype)
    try:
        assign_weights(backbone, weights)
    finally:
        _settle_variables(backbone)
    on_event(StageDone("weights", f"{len(weights)} variables as {dtype}", _since(start)))
    return backbone


def _empty_backbone(arch: GemmaArch, dtype: str) -> Any:
    """A ``Gemma3Backbone`` whose variables are not initialized yet (keras' deferred
    initialization in a ``StatelessScope``); every one must then be assigned."""
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import keras
    import keras_hub

    try:
        scope = keras.StatelessScope(initialize_variables=False)
    except TypeError:  # an older keras: build normally (slower, same result)
        return keras_hub.models.Gemma3Backbone(**arch.backbone_kwargs(), dtype=dtype)
    with scope:
        return keras_hub.models.Gemma3Backbone(**arch.backbone_kwargs(), dtype=dtype)


def _settle_variables(backbone: Any) -> None:
    """Take the backbone's variables off keras' list of deferred ones (a later
    ``initialize_all_variables`` would refuse the assigned ones); initialize any still empty."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:
        return
    pending = global_state.get_global_attribute("uninitialized_variables") or []
    ours = {id(v) for v in backbone.variables}
    rest = []
    for variable in pending:
        if id(variable) not in ours:
            rest.append(variable)
        elif getattr(variable, "_value", None) is None:
            variable._deferred_initialize()
        else:
            variable._initializer = None
    global_state.set_global_attribute("uninitialized_variables", rest)


# --------------------------------------------------------------------------- tokenizer


def _tokenizer_from_proto(proto: bytes, where: Path | str, on_event: EventSink) -> GemmaTokenizer:
    """A :class:`GemmaTokenizer` from a SentencePiece model file's bytes. Chat-turn pieces
    stored as CONTROL become USER_DEFINED, so the chat template's text matches them."""
    from sentencepiece import sentencepiece_model_pb2

    pb: Any = sentencepiece_model_pb2
    model = pb.ModelProto()
    try:
        model.ParseFromString(proto)
    except Exception as exc:
        raise ModelSourceError(
            f"{where}: the tokenizer is not a SentencePiece model ({exc})",
            hint="Use the tokenizer.model that came with the checkpoint.",
        ) from exc
    control = pb.ModelProto.SentencePiece.CONTROL
    user = pb.ModelProto.SentencePiece.USER_DEFINED
    changed = []
    for piece in model.pieces:
        if piece.piece in ("<start_of_turn>", "<end_of_turn>") and piece.type == control:
            piece.type = user
            changed.append(piece.piece)
    if changed:
        proto = model.SerializeToString()
        on_event(LogLine(f"Tokenizer: {', '.join(changed)} made matchable in text"))
    try:
        return GemmaTokenizer(proto)
    except ModelSourceError as exc:
        raise ModelSourceError(f"{where}: {exc.message}", hint=exc.hint) from exc


# --------------------------------------------------------------------------- Hugging Face


def _load_hf(
    src: ModelSource, dtype: str, on_event: EventSink, should_stop: StopCheck
) -> tuple[Any, GemmaTokenizer, str]:
    from pipeline.export.hf_checkpoint import read_hf_checkpoint

    if src.path is None:
        repo = src.location.removeprefix("hf://")
        folder = _hf_snapshot(repo, on_event)
        where = f"hf://{repo}"
    else:
        folder = src.path
        repo = None
        where = str(folder)
    _check_stop(should_stop)
    start = time.perf_counter()
    tok_file = folder / "tokenizer.model"
    if not tok_file.is_file():
        raise ModelSourceError(
            f"{where} has no tokenizer.model (the SentencePiece model)",
            hint="Copy tokenizer.model from the original Gemma 3 repository into the folder.",
        )
    tokenizer = _tokenizer_from_proto(tok_file.read_bytes(), where, on_event)
    try:
        state, arch = read_hf_checkpoint(folder)
    except ModelSourceError as exc:
        raise ModelSourceError(
            f"{where}: {exc.message}",
            hint=exc.hint or "Only text Gemma 3 checkpoints (Gemma3ForCausalLM: 270M, 1B) work.",
        ) from exc
    if tokenizer.vocab_size > arch.vocabulary_size:
        raise ModelSourceError(
            f"{where}: tokenizer.model has {tokenizer.vocab_size} pieces, the model only "
            f"{arch.vocabulary_size} embeddings",
            hint="tokenizer.model belongs to another model.",
        )
    on_event(StageDone("read", f"{where}: {len(state)} tensors", _since(start)))
    _check_stop(should_stop)
    backbone = _backbone_from_state(state, arch, dtype, where, on_event)
    name = repo or folder.name
    kind = "Hugging Face repository" if repo else "Hugging Face checkpoint folder"
    about = f"Gemma 3 {_size_label(arch)} ({_hf_variant(folder, name)}): {kind} {name}"
    return backbone, tokenizer, about


def _hf_variant(folder: Path, name: str) -> str:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return "instruct"
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict) and config.get("chat_template"):
            return "instruct"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    low = name.lower().replace("_", "-")
    if low.endswith("-it") or "-it-" in low or "instruct" in low:
        return "instruct"
    return "no chat template: likely pretrained"


def _hf_snapshot(repo: str, on_event: EventSink) -> Path:
    """The local snapshot of ``repo`` (weights, config, tokenizer), downloaded if needed."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:
        raise ModelSourceError(
            f"hf://{repo} needs the huggingface_hub package", hint="pip install huggingface_hub"
        ) from exc
    try:
        local = snapshot_download(repo, allow_patterns=HF_PATTERNS, local_files_only=True)
        return Path(str(local))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if _env_true("HF_HUB_OFFLINE"):
        raise ModelSourceError(
            f"hf://{repo} is not in the Hugging Face cache, and HF_HUB_OFFLINE is set",
            hint="Unset HF_HUB_OFFLINE on a machine with network, or download the folder and "
            "pass its path. " + _OFFLINE_HINT,
        )
    problem = _unreachable(HF_HOST)
    if problem:
        raise ModelSourceError(
            f"Cannot download hf://{repo}: no network ({HF_HOST} is unreachable: {problem})",
            hint=_OFFLINE_HINT,
        )
    on_event(LogLine(f"Downloading hf://{repo} into the Hugging Face cache"))
    start = time.perf_counter()
    try:
        local = snapshot_download(repo, allow_patterns=HF_PATTERNS)
    except GatedRepoError as exc:
        raise ModelSourceError(
            f"hf://{repo} is gated: its license must be accepted first",
            hint=f"Accept it at https://huggingface.co/{repo}, then set HF_TOKEN (or run "
            "`hf auth login`).",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelSourceError(
            f"hf://{repo} does not exist (or is private)",
            hint="Check the name; for a private repository set HF_TOKEN.",
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelSourceError(
            f"Downloading hf://{repo} failed: {exc}", hint=_OFFLINE_HINT
        ) from exc
    on_event(StageDone("download", f"hf://{repo}", _since(start)))
    return Path(str(local))


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _unreachable(host: str, port: int = 443, timeout: float | None = None) -> str | None:
    """None when a TCP connection to ``host`` opens within the timeout, else the reason.
    With an HTTPS proxy configured the check is skipped (the proxy decides)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    limit = PROBE_TIMEOUT_S if timeout is None else timeout
    result: list[str | None] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=limit).close()
            result.append(None)
        except OSError as exc:
            result.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(limit + 1.0)
    return result[0] if result else f"no answer within {limit:g} s"


# --------------------------------------------------------------------------- keras-hub presets


def _load_preset(
    src: ModelSource, dtype: str, on_event: EventSink, should_stop: StopCheck
) -> tuple[Any, GemmaTokenizer, str]:
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import keras_hub

    preset = src.location
    where = src.display
    if src.remote:
        _check_kaggle_access(preset, where, on_event)
    config = _preset_json(preset, where)
    problem = _keras_config_problem(config)
    if problem:
        raise ModelSourceError(
            f"{where} is {problem}",
            hint="Supported presets: " + ", ".join(SUPPORTED_PRESETS) + ".",
        )
    _check_stop(should_stop)
    start = time.perf_counter()
    if src.remote:
        on_event(LogLine(f"Loading {where} (a first download from Kaggle takes minutes)"))
    try:
        backbone = keras_hub.models.Gemma3Backbone.from_preset(preset, dtype=dtype)
    except Exception as exc:
        raise ModelSourceError(
            f"Cannot load {where}: {type(exc).__name__}: {exc}",
            hint="Check the preset folder is complete (config.json, model.weights.h5), or "
            "that the Kaggle download can run. " + _OFFLINE_HINT,
        ) from exc
    on_event(StageDone("weights", f"{where} as {dtype}", _since(start)))
    spm = _preset_file(preset, "assets/tokenizer/vocabulary.spm", where)
    tokenizer = _tokenizer_from_proto(Path(spm).read_bytes(), where, on_event)
    if src.path is None and preset in SUPPORTED_PRESETS:
        about = f"{SUPPORTED_PRESETS[preset]}: keras-hub preset {preset}"
    else:
        arch = arch_of_backbone(backbone)
        variant = "instruct" if "instruct" in preset.lower() else "variant unknown"
        about = f"Gemma 3 {_size_label(arch)} ({variant}): {where}"
    return backbone, tokenizer, about


def _preset_file(preset: str, name: str, where: str) -> str:
    from keras_hub.src.utils.preset_utils import get_file

    try:
        return str(get_file(preset, name))
    except FileNotFoundError as exc:
        raise ModelSourceError(
            f"{where} has no {name}",
            hint="A keras-hub Gemma 3 preset has config.json, model.weights.h5 and "
            "assets/tokenizer/vocabulary.spm.",
        ) from exc
    except Exception as exc:
        raise ModelSourceError(
            f"Cannot fetch {name} of {where}: {type(exc).__name__}: {exc}", hint=_OFFLINE_HINT
        ) from exc


def _preset_json(preset: str, where: str) -> dict[str, Any]:
    path = _preset_file(preset, "config.json", where)
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"Cannot read {path}: {exc}", hint="Re-create the preset.") from exc
    if not isinstance(config, dict):
        raise ModelSourceError(f"{path} is not a keras-hub config", hint="Re-create the preset.")
    return config


def _keras_config_problem(config: Mapping[str, Any]) -> str | None:
    """Why a keras-hub preset config cannot be trained here, or None."""
    name = str(config.get("registered_name") or config.get("class_name") or "")
    if not name.endswith("Gemma3Backbone"):
        return f"a {name or 'non-keras-hub'} preset, not a Gemma 3 backbone"
    cfg = config.get("config") or {}
    if cfg.get("vision_encoder"):
        return "an image+text Gemma 3 (the trainer is text-only)"
    for key in ("global_rope_scaling_factor", "local_rope_scaling_factor"):
        if float(cfg.get(key, 1.0) or 1.0) != 1.0:
            return f"a RoPE-scaled Gemma 3 ({key}={cfg[key]}: 4B or larger), not supported"
    if cfg.get("is_embedding_model") or cfg.get("use_bidirectional_attention"):
        return "an embedding model, not a causal language model"
    for key in ("attention_logit_soft_cap", "final_logit_soft_cap"):
        if cfg.get(key) is not None:
            return f"a Gemma 3 variant with {key}, not supported"
    for key in (
        "query_head_dim_normalize",
        "use_query_key_norm",
        "use_post_ffw_norm",
        "use_post_attention_norm",
        "use_sliding_window_attention",
    ):
        if cfg.get(key, True) is False:
            return f"a Gemma 3 variant with {key}=False, not supported"
    return None


def _check_kaggle_access(preset: str, where: str, on_event: EventSink) -> None:
    """Fail fast, naming what is missing, when a preset must be downloaded but cannot be."""
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    handle = str(BUILTIN_PRESETS.get(preset, {}).get("kaggle_handle", preset))
    if _kaggle_cached(handle):
        on_event(LogLine(f"{where}: found in the kagglehub cache"))
        return
    try:
        from kagglehub.config import get_kaggle_credentials

        credentials = get_kaggle_credentials()
    except ValueError as exc:
        raise ModelSourceError(
            f"Cannot download {where} from Kaggle: bad Kaggle credentials ({exc})",
            hint="Fix ~/.kaggle/kaggle.json (username, key) or set KAGGLE_USERNAME and KAGGLE_KEY.",
        ) from exc
    except ImportError:
        credentials = None
    if credentials is None:
        raise ModelSourceError(
            f"Cannot download {where} from Kaggle: no Kaggle credentials (KAGGLE_USERNAME and "
            "KAGGLE_KEY are not set, and there is no ~/.kaggle/kaggle.json)",
            hint="Create an API token at https://www.kaggle.com/settings, accept the Gemma 3 "
            "license at https://www.kaggle.com/models/keras/gemma3, then set KAGGLE_USERNAME "
            "and KAGGLE_KEY. " + _OFFLINE_HINT,
        )
    problem = _unreachable(KAGGLE_HOST)
    if problem:
        raise ModelSourceError(
            f"Cannot download {where} from Kaggle: no network ({KAGGLE_HOST} is unreachable: "
            f"{problem})",
            hint=_OFFLINE_HINT,
        )


def _kaggle_cached(handle: str) -> bool:
    """Whether kagglehub already holds the preset's files (then no network is needed)."""
    try:
        from kagglehub.cache import Cache
        from kagglehub.handle import parse_model_handle

        parsed = parse_model_handle(handle.removeprefix("kaggle://"))
        if not parsed.is_versioned():
            return False
        cache = Cache()
        files = ("config.json", "model.weights.h5", "assets/tokenizer/vocabulary.spm")
        return all(cache.load_from_cache(parsed, f) for f in files)
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return False
