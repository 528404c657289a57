"""Raw record -> :class:`~pipeline.data.types.Conversation`, and back to ShareGPT or ChatML.

Contract (docs/data-api.md): :func:`to_conversation` never raises for bad data; structural
problems (a missing field, a wrong type, an unknown role, an unusable content part) are
:class:`~pipeline.data.types.Issue` values with the exact field path, e.g.
``conversations[2].from``, and then no conversation is returned. What a conversation *says*
(empty text, length, alternation, the last turn, duplicate ids) is checked afterwards, per
chunk, by the pandera schemas in :mod:`pipeline.data.schemas`.

Mapping to canonical turns:

* ShareGPT: the optional ``system`` column becomes a first system turn; ``function_call``
  turns are ``tool_call`` (text = the JSON string as given), ``observation`` turns
  ``tool_result``.
* ChatML/OpenAI: ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts
  (joined with no separator, as Hugging Face chat templates do); an assistant message with
  ``tool_calls`` becomes a ``tool_call`` turn whose text is the JSON of the call
  (``{"name", "arguments"}``, arguments parsed when they are a JSON string) or of the list of
  calls; ``tool`` messages are ``tool_result``.
* Alpaca: ``system`` -> system turn; each ``history`` pair -> user and model turns;
  ``instruction`` + ``"\\n\\n"`` + ``input`` (input only when not blank) -> user; ``output``
  -> model.

``tools`` is kept as a JSON string (a list or object is serialized with
``json.dumps(ensure_ascii=False)``). Column and role names come from the
:class:`~pipeline.data.types.DatasetSpec`.

This module is the public entry; the work is done in :mod:`pipeline.data.formats` (one module
per input format, the shared :mod:`~pipeline.data.formats.base`, and
:mod:`~pipeline.data.formats.output` for writing), whose public names are re-exported here.
"""

from __future__ import annotations

from pipeline.data.formats.alpaca import convert_alpaca
from pipeline.data.formats.base import (
    SRC_PROMPT,
    SRC_RESPONSE,
    SRC_SYSTEM,
    Converted,
    FieldNames,
)
from pipeline.data.formats.chatml import convert_chatml
from pipeline.data.formats.output import conversation_to_chatml, conversation_to_sharegpt
from pipeline.data.formats.sharegpt import convert_sharegpt
from pipeline.data.readers.records import RawRecord
from pipeline.data.types import ROLES, Conversation, DatasetSpec, FormatName, Issue
from pipeline.errors import DatasetError

_CONVERTERS = {"sharegpt": convert_sharegpt, "chatml": convert_chatml, "alpaca": convert_alpaca}


class Converter:
    """Converts the records of one file: the format and its names are looked up once."""

    def __init__(self, fmt: FormatName, spec: DatasetSpec) -> None:
        self.fmt = fmt
        self.names = FieldNames(fmt, spec)
        self._columns = spec.column_map(fmt)
        self._roles = spec.role_map(fmt)
        self._convert = _CONVERTERS[fmt]
        wrong = {k: v for k, v in self._roles.items() if v not in ROLES}
        if wrong:
            raise DatasetError(
                f"DatasetSpec.roles maps {wrong} to roles that do not exist",
                hint=f"map each role name to one of {', '.join(ROLES)}",
            )

    def __call__(self, record: RawRecord) -> Converted:
        return self._convert(record, self._columns, self._roles)


def convert_record(record: RawRecord, fmt: FormatName, spec: DatasetSpec) -> Converted:
    """:func:`to_conversation` plus where each turn's text came from (for issue fields)."""
    return Converter(fmt, spec)(record)


def to_conversation(
    record: RawRecord, fmt: FormatName, spec: DatasetSpec
) -> tuple[Conversation | None, list[Issue]]:
    """Convert one raw record; the conversation is None when there are issues."""
    converted = convert_record(record, fmt, spec)
    return converted.conversation, converted.issues


__all__ = [
    "SRC_PROMPT",
    "SRC_RESPONSE",
    "SRC_SYSTEM",
    "Converted",
    "Converter",
    "FieldNames",
    "conversation_to_chatml",
    "conversation_to_sharegpt",
    "convert_record",
    "to_conversation",
]
