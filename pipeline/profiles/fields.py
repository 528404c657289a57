"""Help text and in-place editing: :func:`describe_fields`, :func:`validate_field` and
:func:`replace_fields`."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from pipeline.errors import ProfileError
from pipeline.profiles.constraints import _check_value, _key, _Spec, _specs
from pipeline.profiles.io import _default, _plain, profile_from_dict, profile_to_dict
from pipeline.profiles.problems import Problem
from pipeline.profiles.schema import _SECTIONS, Profile


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
