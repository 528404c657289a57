"""End-to-end tests of ``pipeline.training.trainer.train`` on the tiny Gemma 3 (CPU, float32).

Every test runs the real job: the tiny random model (or a tiny model saved as a Hugging Face
folder), the real tokenizer, the bundled samples or a small generated dataset, the jitted
step, checkpoints and the run folder. No mocks: faults are real (a poisoned embedding row, a
damaged file on disk). Each ``train`` call takes a few seconds (mostly the step's compile).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("jax")

from pipeline.errors import TrainingError
from pipeline.events import (
    CheckpointSaved,
    Event,
    LogLine,
    RunFinished,
    RunStarted,
    StepMetrics,
)
from pipeline.models.lora import load_npz
from pipeline.profiles.schema import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    Profile,
    TrainConfig,
)
from pipeline.training.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from pipeline.training.runs import is_locked, read_metrics, read_run_record
from pipeline.training.trainer import RunResult, train
from pipeline.workspace import Workspace
from tests.conftest import SAMPLES

SHAREGPT = SAMPLES / "sample_sharegpt.jsonl"
ALPACA = SAMPLES / "sample_alpaca.json"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace of the tests' own whose caches (the embedded GGUF the tokenizer comes
    from, the tokenizer proto) are links to the default workspace's, so nothing is rebuilt
    and no run lands in the real workspace."""
    from pipeline.models.embedded import MODELS_SUBDIR
    from pipeline.models.tokenizer import CACHE_SUBDIR

    shared = Workspace.default().cache_dir
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    ws.cache_dir.mkdir(parents=True)
    for sub in (MODELS_SUBDIR, CACHE_SUBDIR):
        (shared / sub).mkdir(parents=True, exist_ok=True)
        (ws.cache_dir / sub).symlink_to(shared / sub, target_is_directory=True)
    return ws


def make_profile(*, source: str = "tiny", data: DataConfig | None = None, **train: Any) -> Profile:
    """A CPU-sized profile: tiny model, float32, 64-token rows, a learning rate high enough
    that the adapter moves visibly in a few steps."""
    settings: dict[str, Any] = {
        "batch_size": 2,
        "sequence_length": 64,
        "max_steps": 8,
        "checkpoint_every": 2,
        "precision": "float32",
        "learning_rate": 2e-2,
        "warmup_steps": 2,
        "seed": 3,
        "packing": True,
        "loss_chunk_size": 32,
    }
    settings.update(train)
    return Profile(
        name="trainer-test",
        model=ModelConfig(source=source, dtype="float32"),
        lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down")),
        train=TrainConfig(**settings),
        data=data or DataConfig(),
    )


def stop_after(step: int) -> tuple[Callable[[Event], None], Callable[[], bool], list[Event]]:
    """``(on_event, should_stop, events)``: should_stop turns True once the StepMetrics of
    ``step`` came through on_event."""
    events: list[Event] = []
    seen = {"stop": False}

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, StepMetrics) and event.step >= step:
            seen["stop"] = True

    return on_event, lambda: seen["stop"], events


def train_rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl's train rows by step; every step must appear once."""
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "train"]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"steps written more than once: {steps}"
    return {r["step"]: r for r in rows}


def eval_rows(run_dir: Path) -> dict[int, dict[str, Any]]:
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "eval"]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"eval steps written more than once: {steps}"
    return {r["step"]: r for r in rows}


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.iterdir() if p.name.startswith("step-"))


def adapter_leaves(adapter: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    return [
        (f"{i}/{target}/{part}", np.asarray(value))
        for i, block in enumerate(adapter["layers"])
        for target, ab in sorted(block.items())
        for part, value in sorted(ab.items())
    ]


def assert_adapters_close(path_a: Path, path_b: Path) -> None:
    a, meta_a = load_npz(path_a)
    b, meta_b = load_npz(path_b)
    assert meta_a == meta_b
    leaves_a, leaves_b = adapter_leaves(a), adapter_leaves(b)
    assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
    for (key, x), (_, y) in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-7, err_msg=key)


def run_json(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def known_trainer_bugs(*found: str | None) -> None:
    """Called last, once every other assertion of the test passed: fail on any of the
    trainer bugs in ``found`` (None = not seen; each was seen once and fixed)."""
    bugs = [b for b in found if b]
    assert not bugs, "trainer bug: " + "; ".join(bugs)


# --------------------------------------------------------------------------- 1. exact resume

RESUME_CASES = {
    # packing on, 2 micro-batches per step; stop requested after step 5, between checkpoints
    "packed-accum2": (
        {"packing": True, "gradient_accumulation_steps": 2, "checkpoint_every": 2},
        None,
        5,
    ),
    # no packing, eval every 2 steps, checkpoint every 3; stop after step 3 (a checkpoint)
    "unpacked-eval": (
        {"packing": False, "checkpoint_every": 3, "eval_every": 2},
        DataConfig(eval_fraction=0.2),
        3,
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_stop_and_resume_equals_an_uninterrupted_run(
    case: str, ws: Workspace, tmp_path: Path
) -> None:
    settings, data, k = RESUME_CASES[case]
    total = 8
    profile = make_profile(data=data, max_steps=total, **settings)

    run_a = tmp_path / "a"
    result_a = train(profile, data=SHAREGPT, run_dir=run_a, workspace=ws)
    assert result_a.status == "finished" and result_a.step == total == result_a.total_steps

    run_b = tmp_path / "b"
    on_event, should_stop, events = stop_after(k)
    stopped = train(
        profile, data=SHAREGPT, run_dir=run_b, workspace=ws, on_event=on_event,
        should_stop=should_stop,
    )  # fmt: skip
    assert stopped.status == "stopped", stopped
    # should_stop is checked before every step; the StepMetrics of step k may arrive after
    # step k+1 was dispatched (metrics are read one step late), so the run stops at k or k+1
    s = stopped.step
    assert k <= s <= k + 1, stopped
    if k % settings["checkpoint_every"] == 0:
        assert s == k  # metrics are read at once at a checkpoint step
    assert f"step {s}" in stopped.message
    assert (run_b / "checkpoints" / checkpoint_name(s)).is_dir()
    assert not (run_b / "final").exists()
    assert load_checkpoint(latest_checkpoint(run_b)).step == s  # type: ignore[arg-type]
    record = run_json(run_b)
    assert record["status"] == "stopped" and record["step"] == s and record["error"] is None
    assert record["total_steps"] == total
    assert not is_locked(run_b)
    assert sorted(train_rows(run_b)) == list(range(1, s + 1))
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert [(e.status, e.step) for e in finished] == [("stopped", s)]
    saved = {e.step for e in events if isinstance(e, CheckpointSaved)}
    assert saved == {i for i in range(1, s + 1) if i % settings["checkpoint_every"] == 0} | {s}

    # the run's own profile is used: the one passed here is ignored
    resume_events: list[Event] = []
    resumed = train(
        make_profile(max_steps=99), resume=run_b, workspace=ws, on_event=resume_events.append
    )
    assert resumed.status == "finished", resumed
    assert resumed.step == total == resumed.total_steps
    started = [e for e in resume_events if isinstance(e, RunStarted)]
    assert [(e.start_step, e.total_steps) for e in started] == [(s, total)]
    steps_run = [e.step for e in resume_events if isinstance(e, StepMetrics)]
    assert steps_run == list(range(s + 1, total + 1))

    rows_a, rows_b = train_rows(run_a), train_rows(run_b)
    assert sorted(rows_a) == sorted(rows_b) == list(range(1, total + 1))
    for step in range(1, total + 1):
        a, b = rows_a[step], rows_b[step]
        assert math.isfinite(a["loss"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), step
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-6), step
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), step
        assert b["tokens"] == a["tokens"] and b["trained_tokens"] == a["trained_tokens"], step
    assert len({rows_a[i]["lr"] for i in rows_a}) > 2  # warmup then cosine: the lr moves
    assert resumed.final_loss == pytest.approx(result_a.final_loss, rel=1e-5)

    evals_a, evals_b = eval_rows(run_a), eval_rows(run_b)
    assert sorted(evals_a) == sorted(evals_b)
    for step, row in evals_a.items():
        assert evals_b[step]["loss"] == pytest.approx(row["loss"], rel=1e-5)
    if data is not None:
        assert sorted(evals_a) == [2, 4, 6, 8]
        assert resumed.best_eval_loss == pytest.approx(result_a.best_eval_loss, rel=1e-5)

    assert_adapters_close(run_a / "final" / "adapter.npz", run_b / "final" / "adapter.npz")
    final_a, final_b = load_checkpoint(run_a / "final"), load_checkpoint(run_b / "final")
    assert final_a.step == final_b.step == total
    assert sorted(final_a.opt_state) == sorted(final_b.opt_state)
    for key, value in final_a.opt_state.items():
        np.testing.assert_allclose(final_b.opt_state[key], value, rtol=1e-5, atol=1e-9)
    assert int(final_b.opt_state["count"]) == total
    moved = [np.abs(v).max() for k_, v in adapter_leaves(final_a.adapter) if k_.endswith("/b")]
    assert min(moved) > 1e-3  # B starts at zero: the runs really trained
    record = run_json(run_b)
    assert record["status"] == "finished" and record["step"] == total and record["error"] is None


# --------------------------------------------------------------------------- 2. NaN / inf

POISON = "☃"
"""One SentencePiece piece of its own in the Gemma 3 vocabulary (checked below)."""


@pytest.fixture(scope="module")
def poisoned(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Gemma 3 Hugging Face folder whose embedding row of ``POISON`` is 1e38 (x sqrt(64)
    overflows float32 to inf at the input, and the first RMSNorm turns it into NaN), and a
    dataset where exactly one example holds that token.

    The embedding is tied: the same row also makes the output logit of that token at every
    position. A row of 1e38 there would blow up every step, so the poison sits in one
    coordinate ``j`` and the final norm's scale at ``j`` is -1 (Gemma's norm multiplies by
    ``1 + scale``): the final hidden state is exactly 0 in that coordinate, the logit of the
    poisoned token stays 0, and only a sequence that holds the token goes non-finite."""
    from pipeline.export.hf_checkpoint import save_hf_checkpoint
    from pipeline.models.config import ARCH_TINY, build_backbone
    from pipeline.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(ws)
    ids = tokenizer.encode(POISON)
    assert len(ids) == 1, ids
    token = ids[0]

    backbone = build_backbone(ARCH_TINY, seed=0)
    j = 5
    embed = backbone.get_layer("token_embedding").embeddings
    table = np.asarray(embed.numpy())
    table[token] = 0.0
    table[token, j] = 1e38
    embed.assign(table)
    final_norm = backbone.get_layer("final_normalization").scale
    scale = np.asarray(final_norm.numpy())
    scale[j] = -1.0
    final_norm.assign(scale)

    root = tmp_path_factory.mktemp("poisoned")
    folder = save_hf_checkpoint(backbone, root / "tiny-poisoned", tokenizer_proto=tokenizer.proto)

    topics = [
        "sorting a list", "reading a file", "parsing JSON", "opening a socket",
        "timing code", "walking a folder", "hashing bytes", "zipping files",
        "printing a table", "joining paths", "making a temp dir", "rounding floats",
    ]  # fmt: skip
    rows = []
    for i, topic in enumerate(topics):
        answer = f"Use the standard library for {topic}; example number {i} shows how."
        if i == 7:
            answer = f"Use the standard library for {topic} {POISON}; example {i}."
        rows.append(
            {
                "conversations": [
                    {"from": "human", "value": f"How do I go about {topic} in Python?"},
                    {"from": "gpt", "value": answer},
                ]
            }
        )
    data = root / "poisoned.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return {"folder": folder, "data": data, "token": token, "tokenizer": tokenizer}


def poisoned_step(profile: Profile, data: Path, tokenizer: Any, token: int, steps: int) -> int:
    """The first optimizer step whose batch holds ``token``, by replaying the trainer's data
    preparation and batch order (0 when none of the first ``steps`` does)."""
    from pipeline.training.batches import BatchStream
    from pipeline.training.data import prepare_data

    t = profile.train
    prepared = prepare_data(profile.data, t, tokenizer, train_path=data)
    holding = [e for e in prepared.train if token in np.asarray(e.ids)]
    assert len(holding) == 1  # exactly one example holds the poisoned token
    stream = BatchStream(
        prepared.train, batch_size=t.batch_size, sequence_length=t.sequence_length,
        packing=t.packing, seed=t.seed,
    )  # fmt: skip
    for step in range(1, steps + 1):
        batches = [stream.next_batch() for _ in range(t.gradient_accumulation_steps)]
        if any(token in b["token_ids"] for b in batches):
            return step
    return 0


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    checkpoint_every: int, poisoned: dict[str, Any], ws: Workspace, tmp_path: Path
) -> None:
    total = 8
    # a seed that puts the poisoned example at a step k > 2 (odd with checkpoint_every 2, so
    # its metrics are read one step late, after step k+1 has run)
    for seed in range(100):
        profile = make_profile(
            source=str(poisoned["folder"]), max_steps=total, checkpoint_every=checkpoint_every,
            packing=False, batch_size=2, seed=seed,
        )  # fmt: skip
        k = poisoned_step(
            profile, poisoned["data"], poisoned["tokenizer"], poisoned["token"], total
        )
        if 2 < k < total and (checkpoint_every == 1 or k % checkpoint_every != 0):
            break
    else:
        pytest.fail("no seed puts the poisoned example at a step > 2")

    run = tmp_path / "run"
    events: list[Event] = []
    result = train(
        profile, data=poisoned["data"], run_dir=run, workspace=ws, on_event=events.append
    )

    assert isinstance(result, RunResult)
    assert result.status == "failed", result
    assert f"at step {k}" in result.message
    assert "last good checkpoint is kept" in result.message
    record = run_json(run)
    assert record["status"] == "failed"
    assert record["error"] and f"at step {k}" in record["error"]
    assert not is_locked(run)
    finished = [e for e in events if isinstance(e, RunFinished)]
    assert [e.status for e in finished] == ["failed"] and f"step {k}" in finished[0].message

    good = [s for s in range(1, k) if s % checkpoint_every == 0]
    assert checkpoint_steps(run) == good
    assert not (run / "final").exists()
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == good
    for step in good:
        ckpt = load_checkpoint(run / "checkpoints" / checkpoint_name(step))
        assert ckpt.step == step
        for key, value in adapter_leaves(ckpt.adapter):
            assert np.isfinite(value).all(), key
        for key, value in ckpt.opt_state.items():
            assert np.isfinite(value).all(), key
    assert latest_checkpoint(run) == run / "checkpoints" / checkpoint_name(good[-1])

    rows = train_rows(run)
    assert sorted(rows) == list(range(1, k))  # the bad step is not a metrics row
    assert all(math.isfinite(r["loss"]) for r in rows.values())
    assert result.final_loss == pytest.approx(rows[k - 1]["loss"])

    # The step the run reports (RunResult.step, run.json "step") must not be past the bad
    # step: the bad step changed nothing, so the run stands at k - 1 (or, at most, at k).
    assert record["step"] == result.step
    known_trainer_bugs(
        f"a failed run reports step {result.step} although the loss went non-finite at step "
        f"{k} (the lagged metrics read ran one more step first)"
        if result.step > k
        else None
    )
    assert k - 1 <= result.step <= k


# --------------------------------------------------------------------------- 3. early stop


def test_stop_before_the_model_is_loaded(ws: Workspace, tmp_path: Path) -> None:
    run = tmp_path / "run"
    events: list[Event] = []
    result = train(
        make_profile(), data=SHAREGPT, run_dir=run, workspace=ws, on_event=events.append,
        should_stop=lambda: True,
    )  # fmt: skip
    assert result.status == "stopped" and result.step == 0, result
    record = run_json(run)
    assert record["status"] == "stopped" and record["step"] == 0 and record["error"] is None
    assert (run / "profile.toml").is_file()
    assert checkpoint_steps(run) == [] and not (run / "final").exists()
    assert train_rows(run) == {}
    assert not is_locked(run)
    assert [e.status for e in events if isinstance(e, RunFinished)] == ["stopped"]

    with pytest.raises(TrainingError, match="no checkpoint to resume from") as info:
        train(make_profile(), resume=run, workspace=ws)
    assert info.value.hint  # says what to do
    assert run_json(run)["status"] == "stopped"  # the refused resume changed nothing


def test_stop_before_the_first_step(ws: Workspace, tmp_path: Path) -> None:
    run = tmp_path / "run"
    events: list[Event] = []
    stop = {"now": False}

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, RunStarted):
            stop["now"] = True

    result = train(
        make_profile(max_steps=4), data=SHAREGPT, run_dir=run, workspace=ws, on_event=on_event,
        should_stop=lambda: stop["now"],
    )  # fmt: skip
    assert result.status == "stopped" and result.step == 0 and result.total_steps == 4, result
    assert "step 0" in result.message
    record = run_json(run)
    assert record["status"] == "stopped" and record["step"] == 0 and record["total_steps"] == 4
    assert record["error"] is None
    assert list_checkpoints(run) == [] and not (run / "final").exists()
    assert train_rows(run) == {}
    assert not [e for e in events if isinstance(e, StepMetrics | CheckpointSaved)]
    assert not is_locked(run)
    with pytest.raises(TrainingError, match="no checkpoint to resume from"):
        train(make_profile(), resume=run, workspace=ws)


# --------------------------------------------------------------------------- 4. resume errors


STOPPED_EVENTS: list[Event] = []
"""The events of :func:`stopped_run`."""


@pytest.fixture(scope="module")
def stopped_run(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after step 4 of 6, with checkpoints at steps 2 and 4 (copy it before
    changing it)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    on_event, should_stop, events = stop_after(4)
    result = train(
        make_profile(max_steps=6, checkpoint_every=2), data=SHAREGPT, run_dir=run,
        workspace=ws, on_event=on_event, should_stop=should_stop,
    )  # fmt: skip
    assert result.status == "stopped" and result.step == 4, result
    assert checkpoint_steps(run) == [2, 4]
    STOPPED_EVENTS[:] = events
    return run


def test_a_stop_at_a_checkpoint_step_writes_it_once(stopped_run: Path) -> None:
    saved = [e.step for e in STOPPED_EVENTS if isinstance(e, CheckpointSaved)]
    assert set(saved) == {2, 4}
    assert sorted(train_rows(stopped_run)) == [1, 2, 3, 4]
    known_trainer_bugs(
        f"stopping at checkpoint step 4 writes its checkpoint twice ({saved})"
        if len(saved) != len(set(saved))
        else None
    )


def test_ctrl_c_saves_a_checkpoint_and_every_step_is_recorded_once(
    ws: Workspace, tmp_path: Path
) -> None:
    """A real SIGINT (Ctrl+C) arriving while the host handles the metrics of step 3, between
    two checkpoints: the run saves a checkpoint and returns "stopped"; metrics.jsonl holds
    every step up to it once, and the resumed run completes the record."""
    import signal

    run = tmp_path / "run"
    events: list[Event] = []
    sent = {"sigint": False}

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, StepMetrics) and event.step == 3 and not sent["sigint"]:
            sent["sigint"] = True
            signal.raise_signal(signal.SIGINT)  # KeyboardInterrupt, raised here

    profile = make_profile(max_steps=6, checkpoint_every=4)
    try:
        result = train(profile, data=SHAREGPT, run_dir=run, workspace=ws, on_event=on_event)
    except KeyboardInterrupt:
        pytest.fail("Ctrl+C escaped train()")
    assert sent["sigint"]
    assert result.status == "stopped" and "interrupted" in result.message, result
    s = result.step
    assert 3 <= s <= 4
    assert checkpoint_steps(run) == [s]
    assert load_checkpoint(run / "checkpoints" / checkpoint_name(s)).step == s
    record = run_json(run)
    assert record["status"] == "stopped" and record["step"] == s
    assert not is_locked(run)
    first = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]

    resumed = train(profile, resume=run, workspace=ws)
    assert resumed.status == "finished" and resumed.step == 6, resumed
    rows = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert set(rows) >= set(range(s + 1, 7))
    known_trainer_bugs(
        f"after Ctrl+C at step {s}, metrics.jsonl holds steps {first} (each of 1..{s} must "
        f"appear once; after the resume: {rows})"
        if first != list(range(1, s + 1))
        else None
    )
    assert rows == list(range(1, 7))


def test_resume_refuses_a_folder_that_is_not_a_run(ws: Workspace, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="not a gemma-tui run directory") as info:
        train(make_profile(), resume=empty, workspace=ws)
    assert str(empty) in info.value.message and "gemma-tui runs" in (info.value.hint or "")
    assert list(empty.iterdir()) == []  # nothing was written into it

    with pytest.raises(TrainingError, match="No run"):
        train(make_profile(), resume="no-such-run", workspace=ws)

    # a run.json alone does not make a run: there is no profile.toml
    half = tmp_path / "half"
    half.mkdir()
    (half / "run.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TrainingError, match="not a gemma-tui run directory"):
        train(make_profile(), resume=half, workspace=ws)


def test_resume_with_a_damaged_adapter_says_so(
    stopped_run: Path, ws: Workspace, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    latest = run / "checkpoints" / checkpoint_name(4)
    # a readable archive with the wrong content: the adapter's arrays are gone
    with (latest / "adapter.npz").open("wb") as fh:
        np.savez(fh, nothing=np.zeros(3))
    with pytest.raises(TrainingError, match="damaged") as info:
        train(make_profile(), resume=run, workspace=ws)
    assert "adapter.npz" in info.value.message and str(latest) in info.value.message
    assert checkpoint_name(2) in (info.value.hint or "")  # the other usable checkpoint
    assert checkpoint_steps(run) == [2, 4]  # nothing was removed or written
    assert sorted(train_rows(run)) == [1, 2, 3, 4]


@pytest.mark.parametrize("how", ["damaged", "crashed"])
def test_resume_from_an_earlier_checkpoint_keeps_each_step_once(
    how: str, stopped_run: Path, ws: Workspace, tmp_path: Path
) -> None:
    """The latest checkpoint (step 4) is unusable, so the run resumes from step 2 and trains
    steps 3 and 4 again: "damaged", its adapter.npz is not an archive at all (skipped with a
    warning); "crashed", it was never written (the process died after step 4's metrics line,
    before its checkpoint, leaving run.json "running"). metrics.jsonl must still hold each
    step once."""
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    latest = run / "checkpoints" / checkpoint_name(4)
    if how == "damaged":
        (latest / "adapter.npz").write_bytes(b"not a zip file")
    else:
        shutil.rmtree(latest)
        record = run_json(run)
        record["status"] = "running"
        (run / "run.json").write_text(json.dumps(record), encoding="utf-8")
    events: list[Event] = []
    result = train(make_profile(), resume=run, workspace=ws, on_event=events.append)
    assert result.status == "finished" and result.step == 6, result
    assert [e.start_step for e in events if isinstance(e, RunStarted)] == [2]
    assert [e.step for e in events if isinstance(e, StepMetrics)] == [3, 4, 5, 6]
    assert run_json(run)["status"] == "finished"
    rows = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["type"] == "train"]
    assert sorted(set(rows)) == list(range(1, 7))
    warned = any(
        isinstance(e, LogLine) and e.level == "warning" and checkpoint_name(4) in e.message
        for e in events
    )
    known_trainer_bugs(
        f"metrics.jsonl repeats the steps after the checkpoint resumed from: {rows}"
        if len(rows) != len(set(rows))
        else None,
        "the warning that the damaged checkpoint is skipped never reaches on_event"
        if how == "damaged" and not warned
        else None,
    )


def test_resume_with_only_an_unreadable_checkpoint_names_it(
    stopped_run: Path, ws: Workspace, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    shutil.rmtree(run / "checkpoints" / checkpoint_name(2))
    bad = run / "checkpoints" / checkpoint_name(4)
    (bad / "adapter.npz").write_bytes(b"not a zip file")
    with pytest.raises(TrainingError) as info:
        train(make_profile(), resume=run, workspace=ws)
    assert str(run) in info.value.message
    assert run_json(run)["status"] == "stopped"  # the refused resume changed nothing
    text = f"{info.value.message} {info.value.hint or ''}"
    known_trainer_bugs(
        f"with its only checkpoint damaged the resume error does not say so: {text!r}"
        if checkpoint_name(4) not in text or "not an npz" not in text
        else None
    )


# --------------------------------------------------------------------------- 5. eval


def test_eval_every_and_at_the_end_with_the_best_loss_recorded(
    ws: Workspace, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    total = 5
    events: list[Event] = []
    result = train(
        make_profile(
            data=DataConfig(eval_fraction=0.25), max_steps=total, eval_every=2,
            checkpoint_every=0, learning_rate=5e-2,
        ),
        data=ALPACA, run_dir=run, workspace=ws, on_event=events.append,
    )  # fmt: skip
    assert result.status == "finished" and result.step == total, result
    evals = eval_rows(run)
    assert sorted(evals) == [2, 4, 5]
    losses = [evals[s]["loss"] for s in sorted(evals)]
    assert all(math.isfinite(x) for x in losses)
    assert len(set(losses)) == 3  # the adapter changes between evals
    assert len({evals[s]["tokens"] for s in evals}) == 1 and evals[2]["tokens"] > 0
    best = min(losses)
    assert result.best_eval_loss == pytest.approx(best, rel=1e-12)
    record = run_json(run)
    assert record["best_eval_loss"] == pytest.approx(best, rel=1e-12)
    assert record["status"] == "finished" and record["step"] == total
    final = load_checkpoint(run / "final")
    assert final.state["best_eval_loss"] == pytest.approx(best, rel=1e-12)
    assert checkpoint_steps(run) == []  # checkpoint_every 0: only final/
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [total]
    read_back = read_run_record(run)
    assert read_back.best_eval_loss == pytest.approx(best, rel=1e-12)
