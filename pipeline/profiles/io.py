"""Profiles as dicts and TOML: parse and build, load, save and list files."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from pipeline.errors import ProfileError
from pipeline.profiles.constraints import _check_value, _key, _specs
from pipeline.profiles.paths import PROFILES_DIR
from pipeline.profiles.problems import UNSET, Problem, ProfileValidationError, _type_name
from pipeline.profiles.schema import _SECTIONS, Profile, _combination_problems


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
