"""Pandera checks of canonical conversations, one chunk at a time.

Parsing and conversion (:mod:`pipeline.data.loader`, :mod:`pipeline.data.converter`) find the
structural problems, because nothing can be built without them. What the conversations say
is checked here, by two pandera ``DataFrameSchema`` values run with ``lazy=True`` over a whole
chunk (thousands of records) at once:

* the *turn* frame, one row per turn (``rec``: position in the chunk, ``pos``: turn index,
  ``role``, ``side``: 0 system, 1 user side, 2 model side, ``text``): known role, text not
  empty or blank, text not over ``max_chars``, a system prompt only first, strict
  alternation (the first non-system turn on the user side, then user and model sides in
  turn; ``user``/``tool_result`` are the user side, ``model``/``tool_call`` the model side);
* the *conversation* frame, one row per conversation (``n_model``: model-side turns,
  ``last_side``, ``id``, ``id_seen``: the id was used by an earlier chunk): has a model-side
  turn, ends on the model side, id unique across the whole stream.

Every pandera failure case is mapped back to an :class:`~pipeline.data.types.Issue` with the
record's file, line and index, the exact field (``conversations[3].value``) and a reason that
says what is wrong and what to do. Only lists are built per record; all checks are vectorized.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from pipeline.data.converter import SRC_SYSTEM, FieldNames
from pipeline.data.readers.records import record_issue
from pipeline.data.types import MODEL_SIDE, ROLES, USER_SIDE, Conversation, Issue

SIDE: dict[str, int] = {
    role: 1 if role in USER_SIDE else 2 if role in MODEL_SIDE else 0 for role in ROLES
}
"""0 system, 1 the user side, 2 the model side (as :mod:`pipeline.data.types` splits them)."""
# Roles travel as categorical codes: one dict lookup per turn, no strings to convert.
_ROLE_CODE: dict[str, int] = {role: n for n, role in enumerate(ROLES)}
_ROLE_CATEGORIES = pd.CategoricalDtype(list(ROLES))
_SIDE_OF_CODE = np.asarray([SIDE[role] for role in ROLES], dtype=np.int8)
_SIDE_NAME = {1: "user", 2: "model"}


def _not_blank(text: pd.Series) -> pd.Series:
    return text.str.strip().str.len() > 0


def _system_first(df: pd.DataFrame) -> pd.Series:
    return pd.Series((df["side"].to_numpy() != 0) | (df["pos"].to_numpy() == 0), index=df.index)


def _alternates(df: pd.DataFrame) -> pd.Series:
    """Non-system turns: the first of each conversation on the user side, then alternating.

    A misplaced system turn is left out here (it is reported as ``system_not_first``), so one
    mistake is one issue.
    """
    side = df["side"].to_numpy()
    rec = df["rec"].to_numpy()
    ok = np.ones(len(df), dtype=bool)
    chat = np.flatnonzero(side != 0)
    s, r = side[chat], rec[chat]
    first = np.ones(len(chat), dtype=bool)
    first[1:] = r[1:] != r[:-1]
    prev = np.zeros_like(s)
    prev[1:] = s[:-1]
    ok[chat] = np.where(first, s == 1, s != prev)
    return pd.Series(ok, index=df.index)


def _ids_unique(df: pd.DataFrame) -> pd.Series:
    ids = df["id"]
    dup = ids.notna().to_numpy() & (
        ids.duplicated(keep="first").to_numpy() | df["id_seen"].to_numpy()
    )
    return pd.Series(~dup, index=df.index)


def turn_schema(max_chars: int) -> pa.DataFrameSchema:
    """The schema of the turn frame (see the module docstring)."""
    return pa.DataFrameSchema(
        {
            "rec": pa.Column("int64"),
            "pos": pa.Column("int64"),
            "role": pa.Column(
                _ROLE_CATEGORIES, pa.Check(lambda s: s.isin(ROLES), name="unknown_role")
            ),
            "side": pa.Column("int8"),
            "text": pa.Column(
                str,
                [
                    pa.Check(_not_blank, name="empty_field"),
                    pa.Check(lambda s: s.str.len() <= max_chars, name="text_too_long"),
                ],
            ),
        },
        checks=[
            pa.Check(_system_first, name="system_not_first"),
            pa.Check(_alternates, name="not_alternating"),
        ],
        strict=True,
        name="turns",
    )


def conversation_schema() -> pa.DataFrameSchema:
    """The schema of the conversation frame (see the module docstring)."""
    return pa.DataFrameSchema(
        {
            "rec": pa.Column("int64"),
            "n_model": pa.Column("int64", pa.Check(lambda s: s > 0, name="no_model_turn")),
            "last_side": pa.Column(
                "int8", pa.Check(lambda s: s == 2, name="not_ending_with_model")
            ),
            "id": pa.Column(str, nullable=True),
            "id_seen": pa.Column(bool),
        },
        checks=[pa.Check(_ids_unique, name="duplicate_id")],
        strict=True,
        name="conversations",
    )


def _failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> list[tuple[str, int]]:
    """(check name, row) for every failing row, once per row and check, in row order."""
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        found: set[tuple[str, int]] = set()
        for check, index in zip(cases["check"], cases["index"], strict=True):
            if index is None or pd.isna(index):
                # A failure of the frame itself (dtype, column set): a bug here, not bad data.
                raise RuntimeError(f"{schema.name} frame failed {check!r}") from err
            found.add((str(check), int(index)))
        return sorted(found, key=lambda f: (f[1], f[0]))
    return []


class ChunkChecker:
    """Runs both schemas over chunks of one stream; remembers ids across chunks."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._turns = turn_schema(max_chars)
        self._convs = conversation_schema()
        self._seen: dict[str, int] = {}  # id -> where it was first seen (see _where_code)
        self._paths: list[str] = []

    def _where_code(self, conv: Conversation) -> int:
        ref = conv.ref
        if ref is None:
            return -1
        if not self._paths or self._paths[-1] != ref.path:
            self._paths.append(ref.path)
        at = (ref.line << 1 | 1) if ref.line is not None else ref.index << 1
        return (len(self._paths) - 1) << 42 | at

    def _where(self, code: int) -> str:
        if code < 0:
            return "an earlier record"
        path = self._paths[code >> 42]
        at = code & ((1 << 42) - 1)
        return f"{path} line {at >> 1}" if at & 1 else f"{path} record {at >> 1}"

    def check(
        self,
        convs: Sequence[Conversation | None],
        sources: Sequence[tuple[int, ...]],
        names: FieldNames,
    ) -> dict[int, list[Issue]]:
        """Issues per chunk position for the converted records of one chunk.

        ``convs[k]`` is None for records that already failed; ``sources[k]`` says where each
        turn's text came from. All ids of valid-so-far records are remembered afterwards.
        """
        recs: list[int] = []
        pos: list[int] = []
        codes: list[int] = []
        texts: list[str] = []
        conv_recs: list[int] = []
        ids: list[str | None] = []
        code_of = _ROLE_CODE
        for k, conv in enumerate(convs):
            if conv is None:
                continue
            turns = conv.turns
            n = len(turns)
            recs.extend([k] * n)
            pos.extend(range(n))
            codes.extend([code_of[t.role] for t in turns])
            texts.extend([t.text for t in turns])
            conv_recs.append(k)
            ids.append(conv.id)
        if not conv_recs:
            return {}
        rec_a = np.asarray(recs, dtype=np.int64)
        code_a = np.asarray(codes, dtype=np.int8)
        side_a = _SIDE_OF_CODE[code_a]
        turns_df = pd.DataFrame(
            {
                "rec": rec_a,
                "pos": np.asarray(pos, dtype=np.int64),
                "role": pd.Categorical.from_codes(code_a, dtype=_ROLE_CATEGORIES),
                "side": side_a,
                "text": pd.Series(texts, dtype=str),
            }
        )
        last = np.flatnonzero(np.r_[rec_a[1:] != rec_a[:-1], True])
        n_model = np.bincount(rec_a, weights=(side_a == 2), minlength=len(convs))
        seen = self._seen
        convs_df = pd.DataFrame(
            {
                "rec": np.asarray(conv_recs, dtype=np.int64),
                "n_model": n_model[conv_recs].astype(np.int64),
                "last_side": side_a[last],
                "id": pd.Series(ids, dtype=str),
                "id_seen": np.asarray([i is not None and i in seen for i in ids], dtype=bool),
            }
        )
        # Remember ids first (the first occurrence wins, valid or not), so that a duplicate's
        # reason can name where the id was first used, in this chunk or an earlier one.
        for k in conv_recs:
            conv = convs[k]
            assert conv is not None
            if conv.id is not None and conv.id not in seen:
                seen[conv.id] = self._where_code(conv)
        issues: dict[int, list[Issue]] = {}
        for code, row in _failures(self._turns, turns_df):
            k, j = recs[row], pos[row]
            conv = convs[k]
            assert conv is not None
            issues.setdefault(k, []).append(self._turn_issue(code, conv, j, sources[k], names))
        for code, row in _failures(self._convs, convs_df):
            k = conv_recs[row]
            conv = convs[k]
            assert conv is not None
            if code == "not_ending_with_model" and any(
                i.code == "no_model_turn" for i in issues.get(k, ())
            ):
                continue  # the more specific issue says it all
            issues.setdefault(k, []).append(self._conv_issue(code, conv, sources[k], names))
        return issues

    def _turn_issue(
        self, code: str, conv: Conversation, j: int, sources: tuple[int, ...], names: FieldNames
    ) -> Issue:
        turn = conv.turns[j]
        src = sources[j]
        chat = names.fmt != "alpaca"
        if src == SRC_SYSTEM:
            what = "the system prompt"
        elif chat:
            what = f"turn {src} ({turn.role!r})"
        else:
            what = repr(names.text(src, turn.role))
        field = names.text(src, turn.role)
        if code == "empty_field":
            state = "empty" if not turn.text else "only whitespace"
            if chat and src != SRC_SYSTEM:
                reason = f"the text of {what} is {state}; write the text or remove the turn"
            else:
                reason = f"{what} is {state}; write the text or remove the row"
        elif code == "text_too_long":
            reason = (
                f"the text of {what} is {len(turn.text):,} characters long, over the limit of "
                f"{self.max_chars:,} (DatasetSpec.max_chars); shorten or split it, or raise "
                "the limit"
            )
        elif code == "system_not_first":
            field = names.role(src, turn.role)
            reason = (
                f"{what} is a system prompt, but a system prompt is only allowed as the first "
                "turn; move it to the start or merge it into the first system prompt"
            )
        elif code == "not_alternating":
            field = names.role(src, turn.role)
            reason = self._alternation_reason(conv, j, what)
        else:  # unknown_role: the converter maps roles, so only a custom role map gets here
            field = names.role(src, turn.role)
            reason = f"{what} has the unknown role {turn.role!r}; use one of {', '.join(ROLES)}"
        return _make(conv, field, reason, code)

    @staticmethod
    def _alternation_reason(conv: Conversation, j: int, what: str) -> str:
        prev = next((t for t in reversed(conv.turns[:j]) if t.role != "system"), None)
        side = SIDE[conv.turns[j].role]
        if prev is None:
            return (
                f"the conversation starts with {what}, on the model side; it must start with "
                "a user turn (after an optional system prompt) — add the user's message first"
            )
        other = _SIDE_NAME[3 - side]
        return (
            f"{what} is on the {_SIDE_NAME[side]} side, but the previous turn "
            f"({prev.role!r}) is too; turns must alternate user/model — merge the two turns "
            f"or insert the missing {other} turn between them"
        )

    def _conv_issue(
        self, code: str, conv: Conversation, sources: tuple[int, ...], names: FieldNames
    ) -> Issue:
        if code == "no_model_turn":
            return _make(
                conv,
                names.conversation(),
                "the conversation has no model turn, so there is nothing to train on; add the "
                "model's reply (or drop the row)",
                code,
            )
        if code == "not_ending_with_model":
            turn = conv.turns[-1]
            return _make(
                conv,
                names.role(sources[-1], turn.role),
                f"the conversation ends with a {turn.role!r} turn (turn {sources[-1]}); it "
                "must end with a model reply — add the reply or remove the trailing turn",
                code,
            )
        if code == "duplicate_id":
            where = self._where(self._seen.get(conv.id or "", -1))
            return _make(
                conv,
                names.id(),
                f"the id {conv.id!r} is already used by {where}; ids must be unique — give "
                "this row another id or remove the duplicate",
                code,
            )
        raise RuntimeError(f"unexpected check {code!r}")


def _make(conv: Conversation, field: str, reason: str, code: str) -> Issue:
    ref = conv.ref
    if ref is None:
        return Issue("", None, None, field, reason, code)
    return record_issue(ref, code, reason, field)
