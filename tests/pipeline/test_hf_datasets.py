"""Hugging Face ``datasets`` folders as input (save_to_disk) and as output (convert, split).

Real ``datasets`` calls on folders under tmp_path; nothing goes to the network (the library is
imported through ``import_datasets``, which sets the offline variables first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipeline.data.browse import open_dataset
from pipeline.data.loader import detect_format, read_records, resolve_sources
from pipeline.data.readers import HfDatasetReader
from pipeline.data.split import split_dataset
from pipeline.data.types import FormatName, Issue
from pipeline.data.validate import convert_dataset, validate_dataset
from pipeline.errors import DatasetError, JobCancelled

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "pipeline" / "data" / "samples"


@pytest.fixture(scope="module")
def hf() -> ModuleType:
    from pipeline.data.readers.hf_dataset import import_datasets

    datasets = import_datasets()
    datasets.disable_progress_bars()
    return datasets


def _sharegpt(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "conversations": [
                {"from": "human", "value": f"question {i}"},
                {"from": "gpt", "value": f"answer {i}"},
            ],
            "system": "Answer briefly." if i == 1 else None,
            "tools": json.dumps([{"name": "lookup"}]) if i == 3 else None,
            "id": f"row-{i}",
        }
        for i in range(n)
    ]
    rows[2]["conversations"][1]["from"] = "robot"
    return rows


def _alpaca(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "instruction": f"instruction {i}",
            "input": "some input" if i % 2 else "",
            "output": f"output {i}",
            "history": [["earlier question", "earlier answer"]] if i == 1 else None,
        }
        for i in range(n)
    ]
    rows[2]["output"] = "   "
    return rows


def _chatml(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "messages": [
                {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i in range(n)
    ]
    call = {"type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    rows[1] = {
        "messages": [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ],
        "tools": json.dumps([{"name": "lookup"}]),
    }
    rows[2]["messages"][1]["role"] = "robot"
    return rows


ROWS = {"sharegpt": _sharegpt, "alpaca": _alpaca, "chatml": _chatml}
BROKEN: dict[str, tuple[str, str]] = {  # the broken row 2: field, code
    "sharegpt": ("conversations[1].from", "unknown_role"),
    "alpaca": ("output", "empty_field"),
    "chatml": ("messages[1].role", "unknown_role"),
}


def save(hf: ModuleType, path: Path, fmt: str, *, n: int = 6, kind: str = "dataset") -> Path:
    """A saved Dataset of ``n`` rows (row 2 broken), or a DatasetDict: that as ``train``
    plus a valid ``test`` split of 3 rows."""
    rows = ROWS[fmt](max(n, 4))[:n]
    ds = hf.Dataset.from_list(rows)
    if kind == "dataset":
        ds.save_to_disk(str(path))
    else:
        test_rows = [r for k, r in enumerate(ROWS[fmt](6)) if k != 2][:3]
        for k, row in enumerate(test_rows):
            if "id" in row:
                row["id"] = f"test-{k}"  # ids are unique across the whole stream
        test = hf.Dataset.from_list(test_rows)
        hf.DatasetDict({"train": ds, "test": test.cast(ds.features)}).save_to_disk(str(path))
    return path


def _no_temporaries(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------- input


@pytest.mark.parametrize("kind", ["dataset", "dict"])
@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca", "chatml"])
def test_validate_saved_dataset(hf: ModuleType, tmp_path: Path, fmt: FormatName, kind: str) -> None:
    path = save(hf, tmp_path / "data_dir", fmt, kind=kind)
    report = validate_dataset(path)
    where = str(path) if kind == "dataset" else f"{path}[train]"
    field, code = BROKEN[fmt]
    assert report.issues == (report.issues[0],)
    issue = report.issues[0]
    assert (issue.path, issue.line, issue.index, issue.field, issue.code) == (
        where,
        None,
        2,
        field,
        code,
    )
    assert issue.location() == f"{where} record 2 [{field}]"
    if kind == "dataset":
        assert (report.total, report.valid, report.invalid) == (6, 5, 1)
        assert report.formats == {where: fmt}
    else:
        assert (report.total, report.valid, report.invalid) == (9, 8, 1)
        assert report.formats == {f"{path}[train]": fmt, f"{path}[test]": fmt}


def test_sources_reader_and_records(hf: ModuleType, tmp_path: Path) -> None:
    dd = save(hf, tmp_path / "dd", "sharegpt", kind="dict")
    single = save(hf, tmp_path / "single", "chatml")
    # A DatasetDict is its splits in index order; its state/info JSON files are no datasets.
    assert resolve_sources(dd) == [dd / "train", dd / "test"]
    assert resolve_sources(single) == [single]
    assert resolve_sources(str(tmp_path / "*")) == [dd / "train", dd / "test", single]

    items = list(read_records(dd))
    assert all(not isinstance(i, Issue) for i in items)
    refs = [(i.ref.path, i.ref.index, i.ref.line) for i in items if not isinstance(i, Issue)]
    assert refs == [(f"{dd}[train]", k, None) for k in range(6)] + [
        (f"{dd}[test]", k, None) for k in range(3)
    ]
    assert detect_format(dd) == "sharegpt"
    assert detect_format(single) == "chatml"

    # Memory-mapped, read in batches; nulls are missing values; read_at gives the same row.
    reader = HfDatasetReader(dd / "train")
    reader.batch_size = 4
    assert reader.display == f"{dd}[train]"
    records = [r for r in reader if not isinstance(r, Issue)]
    assert len(records) == 6 and reader.position == reader.size > 0
    assert "system" not in records[0].data and records[1].data["system"] == "Answer briefly."
    files = [Path(f["filename"]) for f in reader._open().cache_files]
    assert files and all(f.parent == dd / "train" for f in files)
    assert reader.read_at(records[3].ref, None) == records[3]


def test_broken_and_empty_folders(hf: ModuleType, tmp_path: Path) -> None:
    dd = save(hf, tmp_path / "dd", "sharegpt", kind="dict")
    (dd / "dataset_dict.json").write_text('{"splits": ["train", "gone"]}', encoding="utf-8")
    with pytest.raises(DatasetError, match="split 'gone'"):
        resolve_sources(dd)

    bad = save(hf, tmp_path / "bad", "sharegpt")
    arrow = next(bad.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    report = validate_dataset(bad)
    assert [(i.path, i.code) for i in report.issues] == [(str(bad), "bad_hf_dataset")]

    empty = tmp_path / "empty"
    hf.Dataset.from_list(_sharegpt(4)).select([]).save_to_disk(str(empty))  # no Arrow file
    report = validate_dataset(empty)
    assert [(i.path, i.code) for i in report.issues] == [(str(empty), "empty_file")]


def test_browse_a_dataset_dict(hf: ModuleType, tmp_path: Path) -> None:
    dd = save(hf, tmp_path / "dd", "alpaca", kind="dict")
    opened = open_dataset(dd)
    assert len(opened) == 9
    assert list(opened.error_indices) == [2]
    broken = opened.checked(2)
    assert broken.ref.path == f"{dd}[train]" and broken.issues[0].field == "output"
    last = opened.checked(8)
    assert last.valid and last.ref.path == f"{dd}[test]" and last.ref.index == 2


def test_datasets_is_imported_lazily_and_offline(hf: ModuleType, tmp_path: Path) -> None:
    dd = save(hf, tmp_path / "dd", "sharegpt", kind="dict")
    code = f"""
import os, sys
import pipeline.data.loader, pipeline.data.validate, pipeline.data.browse, gemma_tui.cli
from pipeline.data.validate import validate_dataset
assert "datasets" not in sys.modules, "imported with the modules"
validate_dataset({str(SAMPLES / "sample_sharegpt.jsonl")!r})
assert "datasets" not in sys.modules, "imported for a JSONL file"
report = validate_dataset({str(dd)!r})
assert "datasets" in sys.modules and report.total == 9
print(os.environ["HF_DATASETS_OFFLINE"], os.environ["HF_HUB_OFFLINE"])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "0"  # the user's own setting is kept
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]


# --------------------------------------------------------------------------------- output


def test_convert_to_hf_matches_the_jsonl_output(hf: ModuleType, tmp_path: Path) -> None:
    dd = save(hf, tmp_path / "dd", "sharegpt", kind="dict")
    jsonl = convert_dataset(dd, tmp_path / "out.jsonl")
    result = convert_dataset(dd, tmp_path / "out_hf", to="hf")
    assert (result.valid, result.rejected) == (jsonl.valid, jsonl.rejected) == (8, 1)
    assert result.rejects == tmp_path / "out_hf.rejects.jsonl"
    rejected = [json.loads(line) for line in result.rejects.read_text("utf-8").splitlines()]
    assert rejected[0]["source"] == {"path": f"{dd}[train]", "line": None, "index": 2}

    saved = hf.load_from_disk(str(tmp_path / "out_hf"))
    assert isinstance(saved, hf.Dataset)
    assert saved.column_names == ["conversations", "tools", "id"]
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    got = [{k: v for k, v in row.items() if v is not None} for row in saved]
    assert got == expected
    assert got[1]["conversations"][0] == {"from": "system", "value": "Answer briefly."}
    _no_temporaries(tmp_path)

    # The output is a source again (all valid), and rewriting it replaces it.
    assert validate_dataset(tmp_path / "out_hf").ok
    second = convert_dataset(dd / "test", tmp_path / "out_hf", to="hf")
    assert second.valid == 3 and hf.load_from_disk(str(tmp_path / "out_hf")).num_rows == 3
    _no_temporaries(tmp_path)


def test_convert_to_hf_columns_only_when_present(hf: ModuleType, tmp_path: Path) -> None:
    src = save(hf, tmp_path / "alpaca", "alpaca")
    convert_dataset(src, tmp_path / "out", to="hf")
    saved = hf.load_from_disk(str(tmp_path / "out"))
    assert saved.column_names == ["conversations"] and saved.num_rows == 5
    # Nothing valid: still a loadable, empty dataset.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\n', encoding="utf-8")
    assert convert_dataset(bad, tmp_path / "none", to="hf").valid == 0
    assert hf.load_from_disk(str(tmp_path / "none")).num_rows == 0


def test_split_to_hf(hf: ModuleType, tmp_path: Path) -> None:
    src = save(hf, tmp_path / "src", "chatml", n=40)
    result = split_dataset(src, tmp_path / "split", eval_fraction=0.25, seed=7, to="hf")
    assert (result.train, result.eval) == (tmp_path / "split", tmp_path / "split")
    assert (result.train_count, result.eval_count, result.invalid) == (29, 10, 1)
    saved = hf.load_from_disk(str(tmp_path / "split"))
    assert isinstance(saved, hf.DatasetDict) and list(saved) == ["train", "eval"]
    assert saved["train"].num_rows + saved["eval"].num_rows == 39
    assert (saved["train"].num_rows, saved["eval"].num_rows) == (29, 10)

    # Deterministic for a seed, and the same rows as the JSONL split.
    split_dataset(src, tmp_path / "again", eval_fraction=0.25, seed=7, to="hf")
    again = hf.load_from_disk(str(tmp_path / "again"))
    for name in ("train", "eval"):
        assert again[name].to_list() == saved[name].to_list()
    split_dataset(src, tmp_path / "t.jsonl", tmp_path / "e.jsonl", eval_fraction=0.25, seed=7)
    evals = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if v is not None} for r in saved["eval"]] == evals
    other = split_dataset(src, tmp_path / "other", eval_fraction=0.25, seed=8, to="hf")
    assert other.eval_count == 10
    assert hf.load_from_disk(str(tmp_path / "other"))["eval"].to_list() != saved["eval"].to_list()
    _no_temporaries(tmp_path)


def test_hf_outputs_never_replace_an_input(hf: ModuleType, tmp_path: Path) -> None:
    single = save(hf, tmp_path / "single", "sharegpt")
    dd = save(hf, tmp_path / "dd", "sharegpt", kind="dict")
    for source, out in [(single, single), (dd, dd), (dd / "train", dd), (single, tmp_path)]:
        with pytest.raises(DatasetError):
            convert_dataset(source, out, to="hf")
        with pytest.raises(DatasetError):
            split_dataset(source, out, to="hf")
    # An existing folder that is not a saved dataset is never replaced.
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DatasetError, match="holds other files"):
        convert_dataset(single, keep, to="hf")
    assert (keep / "notes.txt").read_text(encoding="utf-8") == "mine"
    # split: one DatasetDict for hf, two files for JSONL.
    with pytest.raises(DatasetError, match="one DatasetDict"):
        split_dataset(single, tmp_path / "s", tmp_path / "e", to="hf")
    with pytest.raises(DatasetError, match="eval output"):
        split_dataset(single, tmp_path / "t.jsonl")
    assert hf.load_from_disk(str(dd))["train"].num_rows == 6
    _no_temporaries(tmp_path)


def test_cancelled_hf_convert_leaves_nothing(hf: ModuleType, tmp_path: Path) -> None:
    src = save(hf, tmp_path / "src", "sharegpt", n=2500)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(JobCancelled):
        convert_dataset(src, out / "hf", to="hf", should_stop=lambda: True)
    assert list(out.iterdir()) == []
