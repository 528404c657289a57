"""Alpaca records -> conversations.

``system`` -> system turn; each ``history`` pair -> user and model turns; ``instruction`` +
``"\\n\\n"`` + ``input`` (input only when not blank) -> user; ``output`` -> model.
"""

from __future__ import annotations

from pipeline.data.formats.base import SRC_PROMPT, SRC_RESPONSE, Converted, RecordBuilder
from pipeline.data.readers.records import RawRecord
from pipeline.data.types import Role


def convert_alpaca(record: RawRecord, cols: dict[str, str], roles: dict[str, Role]) -> Converted:
    """One Alpaca record, with the columns and role map of its DatasetSpec."""
    b = RecordBuilder(record)
    data = record.data
    pkey, qkey, rkey, hkey = cols["prompt"], cols["query"], cols["response"], cols["history"]
    if cols["system"] in data:
        b.system(data[cols["system"]], cols["system"])
    history = data.get(hkey)
    if history is not None:
        if not isinstance(history, list):
            b.wrong_type(hkey, history, "a list of [prompt, response] pairs")
        else:
            for k, pair in enumerate(history):
                if not isinstance(pair, list | tuple) or len(pair) != 2:
                    b.wrong_type(f"{hkey}[{k}]", pair, "a [prompt, response] pair (2 strings)")
                    continue
                prompt = b.string(f"{hkey}[{k}][0]", pair[0], required=True, what="the prompt")
                reply = b.string(f"{hkey}[{k}][1]", pair[1], required=True, what="the response")
                if prompt is not None and reply is not None:
                    b.add("user", prompt, 2 * k)
                    b.add("model", reply, 2 * k + 1)
    prompt = b.string(pkey, data.get(pkey), required=True, what="the instruction text")
    query = b.string(qkey, data.get(qkey), required=False, what="")
    response = b.string(rkey, data.get(rkey), required=True, what="the expected answer")
    if prompt is not None and response is not None:
        if query and query.strip():
            prompt = f"{prompt}\n\n{query}" if prompt.strip() else query
        b.add("user", prompt, SRC_PROMPT)
        b.add("model", response, SRC_RESPONSE)
    return b.result(None, b.ident(data.get(cols["id"]), cols["id"]))
