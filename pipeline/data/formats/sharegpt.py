"""ShareGPT records -> conversations.

The optional ``system`` column becomes a first system turn; ``function_call`` turns are
``tool_call`` (text = the JSON string as given), ``observation`` turns ``tool_result``. Column
and role names come from the :class:`~pipeline.data.types.DatasetSpec`.
"""

from __future__ import annotations

from pipeline.data.formats.base import Converted, RecordBuilder, message_list, message_role
from pipeline.data.readers.records import RawRecord
from pipeline.data.types import Role, Turn


def convert_sharegpt(record: RawRecord, cols: dict[str, str], roles: dict[str, Role]) -> Converted:
    """One ShareGPT record, with the columns and role map of its DatasetSpec."""
    b = RecordBuilder(record)
    data = record.data
    mkey, rkey, ckey = cols["messages"], cols["role"], cols["content"]
    if cols["system"] in data:
        b.system(data[cols["system"]], cols["system"])
    msgs = message_list(b, data, mkey, f"{rkey!r}/{ckey!r}")
    turns, sources = b.turns, b.sources
    for i, msg in enumerate(msgs or ()):
        if type(msg) is dict:  # the fast path: a well-formed turn
            name, text = msg.get(rkey), msg.get(ckey)
            role = roles.get(name) if type(name) is str else None
            if role is not None and type(text) is str:
                turns.append(Turn(role, text))
                sources.append(i)
                continue
        else:
            b.wrong_type(f"{mkey}[{i}]", msg, f"an object with {rkey!r} and {ckey!r}")
            continue
        role = message_role(b, msg, f"{mkey}[{i}].{rkey}", rkey, roles)
        text = b.string(
            f"{mkey}[{i}].{ckey}", msg.get(ckey), required=True, what="the text of the turn"
        )
    return b.result(
        b.tools(data.get(cols["tools"]), cols["tools"]), b.ident(data.get(cols["id"]), cols["id"])
    )
