"""What an export is asked to do, and what it will cost: the quantizations and formats,
:class:`ExportOptions` and their checks, the stages an export goes through, and the size,
RAM and time estimates (fitted to measured conversions; bench/results/export.md)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pipeline.errors import ExportError
from pipeline.export.verify import DEFAULT_PROMPTS, MIN_AGREEMENT
from pipeline.models.config import GemmaArch

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
RAM_PER_F32_BYTE = {"fp16": 6.3}
"""Per quantization where it differs from :data:`RAM_DEFAULT_FACTOR` (fp16 peaked at 7.71 GiB
for the 270M where the others stayed at 6.0-6.6)."""
RAM_DEFAULT_FACTOR = 5.0
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
        peak_ram_bytes=int(RAM_FIXED + RAM_PER_F32_BYTE.get(quant, RAM_DEFAULT_FACTOR) * f32),
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
