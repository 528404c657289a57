"""Conversion: records -> conversations -> ShareGPT/ChatML files, with rejects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.converter import (
    conversation_to_chatml,
    conversation_to_sharegpt,
    to_conversation,
)
from pipeline.data.loader import RawRecord
from pipeline.data.types import Conversation, DatasetSpec, RecordRef, Turn
from pipeline.data.validate import convert_dataset, iter_checked
from pipeline.errors import DatasetError, JobCancelled

REF = RecordRef("mem.jsonl", 0, 1)


def rec(data: dict[str, object]) -> RawRecord:
    return RawRecord(REF, data)


def turns(conv: Conversation | None) -> list[tuple[str, str]]:
    assert conv is not None
    return [(t.role, t.text) for t in conv.turns]


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- records


def test_sharegpt_roles_system_tools_and_id() -> None:
    tools = [{"name": "f", "description": "é", "parameters": {}}]
    conv, issues = to_conversation(
        rec(
            {
                "system": "Be brief.",
                "conversations": [
                    {"from": "human", "value": "q"},
                    {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
                    {"from": "observation", "value": '{"ok": true}'},
                    {"from": "gpt", "value": "a"},
                ],
                "tools": tools,
                "id": 7,
            }
        ),
        "sharegpt",
        DatasetSpec(),
    )
    assert issues == []
    assert turns(conv) == [
        ("system", "Be brief."),
        ("user", "q"),
        ("tool_call", '{"name": "f", "arguments": {}}'),
        ("tool_result", '{"ok": true}'),
        ("model", "a"),
    ]
    assert conv is not None
    assert conv.tools == json.dumps(tools, ensure_ascii=False)
    assert conv.id == "7"
    assert conv.ref == REF


def test_alpaca_history_input_and_system() -> None:
    conv, issues = to_conversation(
        rec(
            {
                "system": "sys",
                "history": [["h1", "r1"], ["h2", "r2"]],
                "instruction": "Translate",
                "input": "bonjour",
                "output": "hello",
            }
        ),
        "alpaca",
        DatasetSpec(),
    )
    assert issues == []
    assert turns(conv) == [
        ("system", "sys"),
        ("user", "h1"),
        ("model", "r1"),
        ("user", "h2"),
        ("model", "r2"),
        ("user", "Translate\n\nbonjour"),
        ("model", "hello"),
    ]
    conv, _ = to_conversation(
        rec({"instruction": "Hi", "input": "  ", "output": "yo"}), "alpaca", DatasetSpec()
    )
    assert turns(conv) == [("user", "Hi"), ("model", "yo")]


def test_chatml_content_parts_and_tool_calls() -> None:
    conv, issues = to_conversation(
        rec(
            {
                "messages": [
                    {"role": "developer", "content": [{"type": "text", "text": "sys"}]},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "get", "arguments": '{"x": 1}'},
                            }
                        ],
                    },
                    {"role": "tool", "content": "42"},
                    {"role": "assistant", "content": "It is 42."},
                ],
                "tools": '[{"type": "function"}]',
            }
        ),
        "chatml",
        DatasetSpec(),
    )
    assert issues == []
    assert turns(conv) == [
        ("system", "sys"),
        ("user", "ab"),
        ("tool_call", '{"name": "get", "arguments": {"x": 1}}'),
        ("tool_result", "42"),
        ("model", "It is 42."),
    ]
    assert conv is not None and conv.tools == '[{"type": "function"}]'
    # Several calls in one message: the text is the JSON list of calls.
    conv, _ = to_conversation(
        rec(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"function": {"name": "a", "arguments": {}}},
                            {"name": "b", "arguments": "not json"},
                        ],
                    },
                ]
            }
        ),
        "chatml",
        DatasetSpec(),
    )
    assert json.loads(turns(conv)[1][1]) == [
        {"name": "a", "arguments": {}},
        {"name": "b", "arguments": "not json"},
    ]


def test_configurable_columns_and_roles() -> None:
    spec = DatasetSpec(
        "sharegpt",
        columns={"messages": "dialog", "role": "speaker", "content": "text"},
        roles={"bot": "model", "person": "user"},
    )
    conv, issues = to_conversation(
        rec(
            {
                "dialog": [
                    {"speaker": "person", "text": "hi"},
                    {"speaker": "bot", "text": "hello"},
                    {"speaker": "human", "text": "defaults still work"},
                    {"speaker": "gpt", "text": "yes"},
                ]
            }
        ),
        "sharegpt",
        spec,
    )
    assert issues == []
    assert turns(conv) == [
        ("user", "hi"),
        ("model", "hello"),
        ("user", "defaults still work"),
        ("model", "yes"),
    ]
    alpaca = DatasetSpec("alpaca", columns={"prompt": "question", "response": "answer"})
    conv, issues = to_conversation(rec({"question": "q", "answer": "a"}), "alpaca", alpaca)
    assert issues == [] and turns(conv) == [("user", "q"), ("model", "a")]


def test_role_map_to_a_role_that_does_not_exist_is_refused() -> None:
    spec = DatasetSpec("sharegpt", roles={"bot": "robot"})  # type: ignore[dict-item]
    with pytest.raises(DatasetError, match="roles"):
        to_conversation(rec(dict(conversations=[])), "sharegpt", spec)


def test_structural_issues_name_the_field() -> None:
    conv, issues = to_conversation(
        rec({"conversations": [{"from": "human"}, {"from": 3, "value": "x"}, "str"]}),
        "sharegpt",
        DatasetSpec(),
    )
    assert conv is None
    assert [(i.field, i.code) for i in issues] == [
        ("conversations[0].value", "missing_field"),
        ("conversations[1].from", "wrong_type"),
        ("conversations[2]", "wrong_type"),
    ]
    assert all(i.path == "mem.jsonl" and i.line == 1 and i.index == 0 for i in issues)


# ----------------------------------------------------------------------------- writing


def sample_conversation() -> Conversation:
    return Conversation(
        (
            Turn("system", "sys"),
            Turn("user", "q"),
            Turn("tool_call", '{"name": "f", "arguments": {"a": 1}}'),
            Turn("tool_result", "r"),
            Turn("model", "a"),
        ),
        tools='[{"name": "f"}]',
        id="x1",
    )


def test_sharegpt_and_chatml_writers() -> None:
    conv = sample_conversation()
    assert conversation_to_sharegpt(conv) == {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": '{"name": "f", "arguments": {"a": 1}}'},
            {"from": "observation", "value": "r"},
            {"from": "gpt", "value": "a"},
        ],
        "tools": '[{"name": "f"}]',
        "id": "x1",
    }
    chatml = conversation_to_chatml(conv)
    assert chatml["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }
    assert chatml["messages"][3] == {"role": "tool", "content": "r"}
    assert chatml["tools"] == [{"name": "f"}]


@pytest.mark.parametrize("to", ["sharegpt", "chatml"])
def test_round_trip_through_a_file(tmp_path: Path, to: str) -> None:
    conv = sample_conversation()
    out = tmp_path / f"out-{to}.jsonl"
    writer = conversation_to_sharegpt if to == "sharegpt" else conversation_to_chatml
    out.write_text(json.dumps(writer(conv)) + "\n", encoding="utf-8")
    (back,) = [c.conversation for c in iter_checked(out)]
    assert back == conv


def test_convert_shared_datasets(shared_datasets: Path, tmp_path: Path) -> None:
    names = ["alpaca_en_demo.json", "identity.json", "glaive_toolcall_en_demo.json"]
    out = tmp_path / "all.jsonl"
    result = convert_dataset([shared_datasets / n for n in names], out)
    assert (result.valid, result.rejected) == (999 + 91 + 300, 0)
    assert result.rejects == tmp_path / "all.rejects.jsonl"
    assert result.rejects.read_text() == ""
    rows = read_jsonl(out)
    assert len(rows) == 1390
    glaive = json.loads((shared_datasets / names[2]).read_text(encoding="utf-8"))
    assert rows[-300:] == glaive  # ShareGPT in, ShareGPT out: identical rows
    # ... and the written file reads back to the same conversations.
    again = convert_dataset(out, tmp_path / "again.jsonl")
    assert again.valid == 1390
    assert read_jsonl(tmp_path / "again.jsonl") == rows


def test_glaive_through_chatml_and_back(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "glaive_toolcall_en_demo.json"
    result = convert_dataset(src, tmp_path / "chatml.jsonl", to="chatml")
    assert (result.valid, result.rejected) == (300, 0)
    rows = read_jsonl(tmp_path / "chatml.jsonl")
    assert all(isinstance(r["tools"], list) for r in rows)
    calls = [m for r in rows for m in r["messages"] if m.get("tool_calls")]  # type: ignore[attr-defined]
    assert len(calls) == 211
    before = [c.conversation for c in iter_checked(src)]
    after = [c.conversation for c in iter_checked(tmp_path / "chatml.jsonl")]
    assert len(after) == 300
    for a, b in zip(before, after, strict=True):
        assert a is not None and b is not None
        assert [t.role for t in a.turns] == [t.role for t in b.turns]
        for x, y in zip(a.turns, b.turns, strict=True):
            if x.role == "tool_call":  # same call, re-serialized
                assert json.loads(x.text) == json.loads(y.text)
            else:
                assert x.text == y.text
        assert a.tools is not None and b.tools is not None
        assert json.loads(a.tools) == json.loads(b.tools)


def test_convert_to_chatml_and_rejects(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"instruction": "q", "output": "a"})
        + "\n{broken\n"
        + json.dumps({"instruction": "q", "output": ""})
        + "\n",
        encoding="utf-8",
    )
    result = convert_dataset(src, tmp_path / "out.jsonl", to="chatml")
    assert (result.valid, result.rejected) == (1, 2)
    assert result.counts_by_code == {"malformed_json": 1, "empty_field": 1}
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    ]
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert rejects[0]["source"] == {"path": str(src), "line": 2, "index": 1}
    assert rejects[0]["row"] == "{broken"
    assert rejects[1]["row"] == {"instruction": "q", "output": ""}
    assert rejects[1]["issues"][0]["field"] == "output"  # type: ignore[index]
    assert rejects[1]["issues"][0]["code"] == "empty_field"  # type: ignore[index]


def test_convert_never_overwrites_an_input(tmp_path: Path) -> None:
    src = tmp_path / "data.jsonl"
    content = json.dumps({"instruction": "q", "output": "a"}) + "\n"
    src.write_text(content)
    with pytest.raises(DatasetError, match="one of the input files") as err:
        convert_dataset(src, src)
    assert err.value.hint
    with pytest.raises(DatasetError, match="one of the input files"):
        convert_dataset(tmp_path, tmp_path / "x.jsonl", rejects=tmp_path / "data.jsonl")
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    with pytest.raises(DatasetError, match="one of the input files"):
        convert_dataset(src, link)
    with pytest.raises(DatasetError, match="same file"):
        convert_dataset(src, tmp_path / "o.jsonl", rejects=tmp_path / "o.jsonl")
    assert src.read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "link.jsonl"]


def test_cancel_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "big.jsonl"
    row = json.dumps({"instruction": "q", "output": "a"}) + "\n"
    src.write_text(row * 5000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.jsonl").write_text("old\n")
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(JobCancelled):
        convert_dataset(src, out_dir / "keep.jsonl", should_stop=stop)
    # The old output is untouched, no rejects file, no temporary files left behind.
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.jsonl"]
    assert (out_dir / "keep.jsonl").read_text() == "old\n"
