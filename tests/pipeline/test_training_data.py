"""prepare_data: dataset path -> checked, deduplicated, split, tokenized and truncated examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data.dedup import dedup_conversations
from pipeline.data.formatter import END_OF_TURN
from pipeline.data.split import split_conversations
from pipeline.data.validate import iter_checked
from pipeline.errors import DatasetError, JobCancelled
from pipeline.events import Event, LogLine, Progress, StageDone
from pipeline.models.tokenizer import GemmaTokenizer, load_tokenizer
from pipeline.profiles.schema import DataConfig, TrainConfig
from pipeline.training.batches import tokenize_conversations
from pipeline.training.data import REJECTS_NAME, prepare_data


@pytest.fixture(scope="module")
def tokenizer() -> GemmaTokenizer:
    return load_tokenizer()  # the real tokenizer, cached in the workspace


def train_cfg(**kw: Any) -> TrainConfig:
    base = {"max_steps": 10, "sequence_length": 128, "seed": 5, "loss_chunk_size": 0}
    return TrainConfig(**{**base, **kw})


def row(q: str, a: str) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = [row(f"Question {i}?", f"Answer number {i}.") for i in range(12)]
BAD = [
    '{"conversations": [',  # malformed JSON
    {"conversations": [{"from": "human", "value": "Hi"}]},  # no model turn
    {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
]


def test_counts_rejects_and_dedup(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    dup = row("question 3?", "answer   number 3.")  # an exact duplicate after normalisation
    path = write_jsonl(tmp_path / "chat.jsonl", [*GOOD[:6], BAD[0], *GOOD[6:], BAD[1], dup, BAD[2]])
    run_dir = tmp_path / "run"
    events: list[Event] = []
    got = prepare_data(
        DataConfig(train_path=str(path)),
        train_cfg(),
        tokenizer,
        rejects_dir=run_dir,
        on_event=events.append,
    )
    assert got.rows_read == 16
    assert got.read.rejected == 3 and got.rejected == 3
    assert got.read.counts_by_code == {"malformed_json": 1, "no_model_turn": 1, "unknown_role": 1}
    assert [i.line for i in got.read.first_issues] == [7, 14, 16]
    assert got.duplicates_exact == 1 and got.duplicates_near == 0
    assert got.eval_from == "none" and len(got.eval) == 0
    t = got.train_counts
    assert (t.rows, t.examples, t.truncated, t.dropped_untrained) == (12, 12, 0, 0)
    assert t.tokens == got.train.tokens and t.trained_tokens == got.train.trained_tokens
    # The examples are the conversations in file order, as tokenize_conversations makes them.
    convs = [c.conversation for c in iter_checked(path) if c.conversation is not None][:12]
    want = tokenize_conversations(convs, tokenizer, sequence_length=128).examples
    assert np.array_equal(got.train.ids, want.ids)
    assert np.array_equal(got.train.mask, want.mask)
    # Rejected rows go to the run's folder in convert's rejects format.
    assert got.rejects == run_dir / REJECTS_NAME
    lines = [json.loads(x) for x in got.rejects.read_text().splitlines()]
    assert [x["source"]["line"] for x in lines] == [7, 14, 16]
    assert lines[1]["row"] == BAD[1] and lines[0]["row"] == BAD[0]
    assert lines[2]["issues"][0]["code"] == "unknown_role"
    warnings = [e for e in events if isinstance(e, LogLine) and e.level == "warning"]
    assert len(warnings) == 3 and "chat.jsonl:7" in warnings[0].message
    assert any(isinstance(e, Progress) and e.stage == "tokenize" for e in events)
    done = [e for e in events if isinstance(e, StageDone) and e.stage == "data"]
    assert done and "3 rejected" in done[0].summary
    assert json.dumps(got.to_dict())  # JSON-ready for run.json


def test_no_rejects_file_when_all_rows_are_valid(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", GOOD)
    got = prepare_data(DataConfig(dedup="none"), train_cfg(), tokenizer, train_path=path,
                       rejects_dir=tmp_path / "run")  # fmt: skip
    assert got.rejects is None and not (tmp_path / "run" / REJECTS_NAME).exists()
    assert got.rejected == 0 and len(got.train) == 12


def test_dedup_modes(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    near = row("Question 1?", "Answer number 1. ")  # differs only by whitespace: exact
    path = write_jsonl(tmp_path / "d.jsonl", [*GOOD, GOOD[0], near])
    none = prepare_data(DataConfig(dedup="none"), train_cfg(), tokenizer, train_path=path)
    exact = prepare_data(DataConfig(dedup="exact"), train_cfg(), tokenizer, train_path=path)
    assert len(none.train) == 14 and none.duplicates_removed == 0
    assert len(exact.train) == 12 and exact.duplicates_exact == 2


def test_eval_fraction_splits_like_the_split_job(
    shared_datasets: Path, tokenizer: GemmaTokenizer
) -> None:
    path = shared_datasets / "alpaca_en_demo.json"
    cfg = train_cfg(sequence_length=512, seed=7)
    got = prepare_data(
        DataConfig(train_path=str(path), eval_fraction=0.1, dedup="exact"), cfg, tokenizer
    )
    convs = [c.conversation for c in iter_checked(path) if c.conversation is not None]
    kept, removed = dedup_conversations(convs, near_threshold=None)
    train, evals = split_conversations(kept, eval_fraction=0.1, seed=7)
    assert got.rows_read == 999 and got.duplicates_exact == len(removed)
    assert got.eval_counts.rows == len(evals) == round(0.1 * len(kept))
    assert got.train_counts.rows == len(train)
    for convs_side, examples in ((evals, got.eval), (train, got.train)):
        want = tokenize_conversations(convs_side, tokenizer, sequence_length=512)
        assert np.array_equal(examples.ids, want.examples.ids)
        assert np.array_equal(examples.offsets, want.examples.offsets)
    # Another seed, another split; the counts still add up.
    other = prepare_data(
        DataConfig(train_path=str(path), eval_fraction=0.1), train_cfg(sequence_length=512, seed=8),
        tokenizer,
    )  # fmt: skip
    assert not np.array_equal(other.eval.ids[:200], got.eval.ids[:200])
    t = got.train_counts
    assert t.examples + t.dropped_untrained == t.rows
    assert t.truncated > 0  # alpaca has a few examples over 513 tokens


def test_eval_path_and_missing_eval_path(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    evals = write_jsonl(tmp_path / "eval.jsonl", [row("Held out?", "Yes."), BAD[1]])
    got = prepare_data(
        DataConfig(train_path=str(train), eval_path=str(evals)),
        train_cfg(),
        tokenizer,
        rejects_dir=tmp_path / "run",
    )
    assert got.eval_from == "path" and len(got.eval) == 1 and len(got.train) == 12
    assert got.eval_read is not None and got.eval_read.rejected == 1
    assert got.rejected == 1 and got.rejects is not None
    assert "Held out?" in tokenizer.decode(got.eval[0].ids.tolist())
    with pytest.raises(DatasetError, match=r"eval data: .*nope\.jsonl does not exist"):
        prepare_data(
            DataConfig(train_path=str(train), eval_path=str(tmp_path / "nope.jsonl")),
            train_cfg(),
            tokenizer,
        )


def test_masks_train_the_reply_and_end_of_turn(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [row("Say hi.", "Hi there!")])
    default = prepare_data(DataConfig(), train_cfg(), tokenizer, train_path=path)
    ex = default.train[0]
    assert tokenizer.decode(ex.ids[ex.mask].tolist()) == f"Hi there!{END_OF_TURN}"
    prompt = prepare_data(DataConfig(), train_cfg(train_on_prompt=True), tokenizer, train_path=path)
    ex2 = prompt.train[0]
    trained = tokenizer.decode(ex2.ids[ex2.mask].tolist())
    assert "Say hi." in trained and trained.endswith(f"Hi there!{END_OF_TURN}\n")
    assert not ex2.mask[0]  # <bos> is never a target


def test_truncation_counts_and_all_dropped(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    long_prompt = row("word " * 200, "Short reply.")
    long_reply = row("Short?", "word " * 200)
    path = write_jsonl(tmp_path / "long.jsonl", [long_prompt, long_reply, GOOD[0]])
    got = prepare_data(DataConfig(), train_cfg(sequence_length=64), tokenizer, train_path=path)
    t = got.train_counts
    assert (t.rows, t.truncated, t.dropped_untrained, t.examples) == (3, 2, 1, 2)
    assert got.train.lengths.max() == 65
    only_long = write_jsonl(tmp_path / "only.jsonl", [long_prompt])
    with pytest.raises(DatasetError, match="truncation at sequence_length 64") as err:
        prepare_data(DataConfig(), train_cfg(sequence_length=64), tokenizer, train_path=only_long)
    assert "sequence_length" in (err.value.hint or "")


def test_bad_inputs_give_clear_errors(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    with pytest.raises(DatasetError, match=r"data\.train_path is not set"):
        prepare_data(DataConfig(), train_cfg(), tokenizer)
    with pytest.raises(DatasetError, match=r"train data: .*missing\.jsonl does not exist"):
        prepare_data(DataConfig(), train_cfg(), tokenizer, train_path=tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="has no rows"):
        prepare_data(DataConfig(), train_cfg(), tokenizer, train_path=empty)
    bad = write_jsonl(tmp_path / "bad.jsonl", BAD)
    with pytest.raises(DatasetError, match="none of the 3 rows") as err:
        prepare_data(DataConfig(), train_cfg(), tokenizer, train_path=bad, rejects_dir=tmp_path)
    assert "malformed_json" in err.value.message and "bad.jsonl:1" in err.value.message
    assert str(tmp_path / REJECTS_NAME) in (err.value.hint or "")
    assert len((tmp_path / REJECTS_NAME).read_text().splitlines()) == 3  # written all the same
    # Alpaca rows read as ShareGPT: every row rejected, and the hint names data.format.
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "output": "y"}])
    with pytest.raises(DatasetError, match="none of the 1 rows") as err:
        prepare_data(DataConfig(format="sharegpt"), train_cfg(), tokenizer, train_path=alpaca)
    assert "data.format" in (err.value.hint or "")


def test_stop_request_leaves_no_rejects_file(tmp_path: Path, tokenizer: GemmaTokenizer) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [BAD[1], *GOOD])
    with pytest.raises(JobCancelled):
        prepare_data(DataConfig(), train_cfg(), tokenizer, train_path=path,
                     rejects_dir=tmp_path / "run", should_stop=lambda: True)  # fmt: skip
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
