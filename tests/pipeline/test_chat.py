"""pipeline.inference: the chat session over real backends.

- Keras/JAX: the tiny random model (the KV-cache decoder against the training forward, with
  and without LoRA, merged or not, across turns and the sliding window), the "Yes." run (stop
  tokens), and the real embedded 270M.
- LiteRT: the "Yes." run exported as .task / .litertlm / .tflite (``yes_export``), through
  the LiteRT-LM engine and the interpreter loop, in the export environment.
"""

from __future__ import annotations

import json
import os
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ChatError
from pipeline.inference.chat import (
    ChatSession,
    ContextTrimmed,
    ReplyDone,
    Sampling,
    check_sampling,
)
from pipeline.inference.targets import (
    OpenOptions,
    list_targets,
    open_target,
    resolve_target,
)
from pipeline.training.generate import greedy_ids
from pipeline.workspace import Workspace

CPU = OpenOptions(device="cpu", context_length=256)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    ws = Workspace(tmp_path_factory.mktemp("chat-ws"))
    backend = open_target(resolve_target("tiny", ws), CPU, workspace=ws)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def yes_keras(yes_run):
    ws, _run_dir = yes_run
    backend = open_target(resolve_target("tiny-run", ws), CPU, workspace=ws)
    yield backend
    backend.close()


# --------------------------------------------------------------------------- the template


def test_history_and_system_render_exactly_as_the_template_says(tiny):
    s = ChatSession(tiny, system="You are terse.")
    assert s.render("Hi") == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    s.send("Hi", should_stop=lambda: False)
    s.history[-1].reply = "Hello."  # what the model said, as the next prompt shows it
    assert s.render("Bye") == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    # the transcript keeps the system prompt as its own turn (ShareGPT "system")
    assert [t.role for t in s.transcript().turns] == ["system", "user", "model"]


def test_sampling_settings_are_checked():
    with pytest.raises(ChatError) as info:
        check_sampling(Sampling(temperature=-1, top_k=-2, top_p=0, max_new_tokens=0))
    for word in ("temperature -1", "top-k -2", "top-p 0", "max new tokens 0"):
        assert word in info.value.message


# --------------------------------------------------------------------------- Keras / JAX


def _reference(backend, prompt: str, n: int, adapter=None, scale: float = 1.0) -> str:
    ids = greedy_ids(
        backend.params,
        adapter,
        backend.tokenizer.encode(prompt),
        arch=backend.arch,
        lora_scale=scale,
        max_new_tokens=n,
    )
    return backend.tokenizer.decode(ids)


def test_kv_cache_decoding_equals_the_training_forward_across_turns(tiny):
    """Greedy replies through the cache equal the cache-free forward, turn after turn (the
    second turn reuses the cache: only the new tokens are prefilled), past the tiny model's
    16-token sliding window."""
    s = ChatSession(tiny, system="Answer in one line.", sampling=Sampling(max_new_tokens=24))
    for text in ("What is two plus two?", "And three plus three, please?"):
        prompt = s.render(text)
        done = s.send(text)
        assert done.text == _reference(tiny, prompt, 24)
        assert done.stats.new_tokens == 24 and done.stats.stop_reason == "max_tokens"
    first, second = (ex.stats for ex in s.history)
    assert first.prompt_tokens > 16 and first.prefill_tokens is not None
    # (a random model's reply does not re-tokenize to the same ids, so the reuse stops there)
    assert second.prefill_tokens is not None and second.prefill_tokens < second.prompt_tokens
    assert second.first_token_s is not None and second.decode_tokens_per_s is not None


def test_several_decode_steps_per_device_call_give_the_same_replies(tiny):
    """The GPU's chunked decoding (8 steps in one device program) on the CPU: the same greedy
    replies and the same cache contents as one step per call, and stopping still works."""
    from pipeline.inference.keras_inference import open_keras_backend

    chunked = open_keras_backend("tiny", device="cpu", context_length=256, chunk=8)
    try:
        assert chunked.chunk == 8 and tiny.chunk == 1
        one = ChatSession(tiny, system="x", sampling=Sampling(max_new_tokens=30))
        many = ChatSession(chunked, system="x", sampling=Sampling(max_new_tokens=30))
        for q in ("Hello there", "More, please."):
            a, b = one.send(q), many.send(q)
            assert a.text == b.text and b.stats.new_tokens == 30
            assert chunked.cached == tiny.cached
        seen: list[str] = []
        s = ChatSession(chunked, sampling=Sampling(max_new_tokens=100))
        done = s.send("Go.", on_text=seen.append, should_stop=lambda: len(seen) >= 5)
        assert done.stats.stop_reason == "stopped" and done.stats.new_tokens < 8 + 5
    finally:
        chunked.close()


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny):
    s = ChatSession(tiny, sampling=Sampling(temperature=1.0, seed=7, max_new_tokens=16))
    a = s.send("Tell me something.").text
    s.reset()
    assert s.send("Tell me something.").text == a
    other = ChatSession(tiny, sampling=Sampling(temperature=1.0, seed=8, max_new_tokens=16))
    assert other.send("Tell me something.").text != a
    # no seed: each session draws its own (also when sampling is switched on later)
    unseeded = []
    for _ in range(2):
        u = ChatSession(tiny)
        u.sampling = Sampling(temperature=1.0, max_new_tokens=16)
        unseeded.append(u.send("Tell me something.").text)
        assert u.sampling.seed is not None
    assert unseeded[0] != unseeded[1]
    greedy = ChatSession(tiny, sampling=Sampling(max_new_tokens=16)).send("Tell me something.")
    top1 = ChatSession(tiny, sampling=Sampling(temperature=1.0, top_k=1, max_new_tokens=16))
    assert top1.send("Tell me something.").text == greedy.text


def test_streaming_and_stopping(tiny):
    s = ChatSession(tiny, sampling=Sampling(max_new_tokens=200))
    seen: list[str] = []
    done = s.send("Go on and on.", on_text=seen.append, should_stop=lambda: len(seen) >= 5)
    assert len(seen) >= 5 and "".join(seen) == done.text
    assert done.stats.stop_reason == "stopped" and done.stats.new_tokens < 200
    # the stopped reply is kept, and the session goes on
    assert s.history[-1].reply == done.text
    assert s.send("Next.", should_stop=lambda: False).stats.new_tokens > 0


def test_old_turns_are_dropped_with_a_notice_and_a_too_long_message_is_refused(tiny):
    s = ChatSession(tiny, sampling=Sampling(max_new_tokens=40))
    events = []
    for i in range(6):
        events += list(s.stream(f"Message number {i}: " + "words " * 20))
    trimmed = [e for e in events if isinstance(e, ContextTrimmed)]
    assert trimmed, "a 256-token context cannot hold six 60-token exchanges"
    assert trimmed[-1].context == 256 and trimmed[-1].dropped >= 1
    assert "no longer shown to the model" in trimmed[-1].describe()
    assert len(s.history) == 6 and s.first_shown >= 1  # the transcript keeps every turn
    assert s.render("x").count("<start_of_turn>user") < 7

    before = list(s.history)
    with pytest.raises(ChatError, match=r"This message alone is \d+ tokens.*holds 256"):
        list(s.stream("too long " * 200))
    assert s.history == before  # nothing changed
    assert isinstance(list(s.stream("Short."))[-1], ReplyDone)
    with pytest.raises(ChatError, match="empty"):
        s.send("   ")


def test_stop_tokens_end_the_reply_and_are_never_shown(yes_keras):
    s = ChatSession(yes_keras, sampling=Sampling(max_new_tokens=30))
    for question in ("What is 3 plus 3?", "What is 50 plus 50?"):
        done = s.send(question)
        assert done.text == "Yes."
        assert done.stats.stop_reason == "stop_token" and done.stats.new_tokens == 2
        assert "<end_of_turn>" not in done.text and "<eos>" not in done.text


def test_a_checkpoint_answers_the_same_with_lora_merged_or_not(yes_run, yes_keras):
    ws, run_dir = yes_run
    merged = open_target(
        resolve_target(f"{run_dir}@30", ws), OpenOptions(device="cpu", merge=True), workspace=ws
    )
    try:
        assert "LoRA merged" in merged.label and "LoRA" in yes_keras.label
        base30 = open_target(resolve_target("tiny-run@30", ws), CPU, workspace=ws)
        try:
            for q in ("What is 1 plus 1?", "Hello"):
                a = ChatSession(merged, sampling=Sampling(max_new_tokens=8)).send(q)
                b = ChatSession(base30, sampling=Sampling(max_new_tokens=8)).send(q)
                assert a.text == b.text
        finally:
            base30.close()
    finally:
        merged.close()


def test_transcript_saves_as_sharegpt_the_dataset_reader_reads(tiny, tmp_path: Path):
    from pipeline.data.checked_stream import iter_checked

    s = ChatSession(tiny, system="Be kind.", sampling=Sampling(max_new_tokens=6))
    s.send("First question?")
    s.send("Second question?")
    out = tmp_path / "chats" / "good.jsonl"
    s.save_jsonl(out)
    s.save_jsonl(out)  # appends a second line
    rows = list(iter_checked(out))
    assert len(rows) == 2 and all(r.valid for r in rows)
    conv = rows[0].conversation
    assert conv is not None and conv.turns == s.transcript().turns
    assert [t.role for t in conv.turns] == ["system", "user", "model", "user", "model"]
    with pytest.raises(ChatError, match="nothing to save"):
        ChatSession(tiny).save_jsonl(tmp_path / "x.jsonl")


def test_targets_list_and_resolve(yes_run, tmp_path: Path):
    ws, run_dir = yes_run
    targets = list_targets(ws)
    assert targets[0].ref == "embedded"
    refs = [t.ref for t in targets]
    assert "tiny-run@final" in refs and "tiny-run@30" in refs
    assert resolve_target("tiny-run", ws).ref == "tiny-run@final"
    assert resolve_target(str(run_dir / "checkpoints" / "step-000030"), ws).ref == "tiny-run@30"
    assert resolve_target("", ws).kind == "base"
    with pytest.raises(ChatError, match=r"no checkpoint '7' \(it has: final, 30\)"):
        resolve_target("tiny-run@7", ws)
    with pytest.raises(ChatError, match="no run named 'nope'"):
        resolve_target("nope@3", ws)
    with pytest.raises(ChatError, match="is not a run, an export, a bundle or a model") as info:
        resolve_target("no-such-thing", ws)
    assert "runs: tiny-run" in (info.value.hint or "")
    with pytest.raises(ChatError, match="does not exist"):
        resolve_target(str(tmp_path / "gone.litertlm"), ws)


def test_a_damaged_checkpoint_is_a_clear_error(yes_run, tmp_path: Path):
    import shutil

    ws, run_dir = yes_run
    broken = tmp_path / "broken-run"
    shutil.copytree(run_dir, broken)
    npz = broken / "final" / "adapter.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(ChatError, match=r"broken-run@final is damaged: adapter\.npz is not an"):
        resolve_target(f"{broken}@final", ws)
    assert resolve_target(str(broken), ws).ref == "broken-run@30"  # the newest usable one
    (broken / "checkpoints" / "step-000030" / "adapter.npz").unlink()
    with pytest.raises(ChatError, match=r"every checkpoint of run broken-run is damaged"):
        resolve_target(str(broken), ws)


def test_float16_is_refused(tmp_path: Path):
    ws = Workspace(tmp_path)
    with pytest.raises(ChatError, match="float16 is not supported"):
        open_target(resolve_target("tiny", ws), OpenOptions(device="cpu", dtype="float16"))


@pytest.mark.slow
def test_the_real_270m_answers_through_keras_on_cpu():
    """The embedded Gemma 3 270M: greedy replies through the cache equal the training
    forward's, and a second turn continues the conversation."""
    backend = open_target(resolve_target("embedded"), OpenOptions(device="cpu", context_length=512))
    try:
        assert "270M" in backend.label and "cpu" in backend.label
        s = ChatSession(backend, sampling=Sampling(max_new_tokens=24))
        prompt = s.render("What is the capital of France?")
        done = s.send("What is the capital of France?")
        assert done.text.strip() and done.text == _reference(backend, prompt, 24)
        assert done.stats.stop_reason in ("stop_token", "max_tokens")
        again = s.send("And of Italy?")
        assert again.text.strip() and again.stats.prefill_tokens < again.stats.prompt_tokens
    finally:
        backend.close()


# --------------------------------------------------------------------------- LiteRT


@pytest.mark.parametrize(
    ("suffix", "runtime"),
    [(".litertlm", None), (".task", None), (".task", "interpreter"), (".tflite", None)],
)
def test_a_tiny_bundle_answers_through_litert_and_stops(yes_export, suffix: str, runtime):
    path = yes_export / f"{yes_export.name}{suffix}"
    target = resolve_target(str(path))
    assert target.kind == "bundle" and "verified" in target.detail
    backend = open_target(target, OpenOptions(runtime=runtime))
    try:
        assert backend.kind == (runtime or ("interpreter" if suffix == ".tflite" else "litert_lm"))
        assert backend.context_length == 128
        s = ChatSession(backend, sampling=Sampling(max_new_tokens=20))
        seen: list[str] = []
        for q in ("What is 3 plus 3?", "What is 7 plus 7?"):
            done = s.send(q, on_text=seen.append)
            assert done.text == "Yes."
            assert done.stats.stop_reason == "stop_token"
            assert "<end_of_turn>" not in "".join(seen)
        if backend.kind == "interpreter":
            # the second message reused the KV cache of the first exchange
            last = s.history[-1].stats
            assert last is not None and last.prefill_tokens < last.prompt_tokens / 2
    finally:
        backend.close()


def test_litert_sampling_stop_and_the_context_limit(yes_export):
    backend = open_target(resolve_target(str(yes_export)), OpenOptions())  # the .litertlm
    try:
        assert backend.kind == "litert_lm"
        # near-uniform sampling over 1000 candidates: it rambles until told to stop
        hot = Sampling(temperature=100.0, top_k=1000, top_p=1.0, seed=3, max_new_tokens=100)
        s = ChatSession(backend, sampling=hot)
        seen: list[str] = []
        done = s.send("Say many things.", on_text=seen.append, should_stop=lambda: len(seen) >= 5)
        assert done.stats.stop_reason == "stopped" and 5 <= done.stats.new_tokens < 100
        assert done.text == "".join(seen)
        s.sampling = Sampling(max_new_tokens=20)
        with pytest.raises(ChatError, match=r"holds 128 tokens"):
            s.send("long " * 300)
        assert s.send("What is 1 plus 1?").stats.new_tokens >= 1  # still usable
    finally:
        backend.close()


def test_a_killed_worker_is_reported_and_the_next_message_restarts_it(yes_export):
    from pipeline.inference.litert_inference import LiteRTBackend

    task = yes_export / f"{yes_export.name}.task"
    backend = open_target(resolve_target(str(task)), OpenOptions(runtime="interpreter"))
    assert isinstance(backend, LiteRTBackend) and backend.path.suffix == ".task"
    try:
        s = ChatSession(backend, sampling=Sampling(max_new_tokens=8))
        assert s.send("What is 2 plus 2?").text == "Yes."
        assert backend.proc is not None
        os.killpg(backend.proc.pid, signal.SIGKILL)
        with pytest.raises(ChatError, match=r"stopped \(killed by SIGKILL \(out of memory\?\)\)"):
            s.send("What is 4 plus 4?")
        assert len(s.history) == 1
        assert s.send("What is 4 plus 4?").text == "Yes."
    finally:
        backend.close()


def _spm_model(tmp_path: Path, vocab: int) -> bytes:
    import sentencepiece as spm

    text = tmp_path / "corpus.txt"
    words = [f"word{i} thing{i % 7} other{i % 13}" for i in range(400)]
    text.write_text("\n".join(words))
    prefix = tmp_path / "small"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=vocab, minloglevel=2
    )
    return (tmp_path / "small.model").read_bytes()


def test_bad_bundles_get_clear_errors(yes_export, tmp_path: Path):
    task = yes_export / f"{yes_export.name}.task"
    # a .task whose tokenizer is not the model's
    wrong = tmp_path / "wrong.task"
    with zipfile.ZipFile(task) as src, zipfile.ZipFile(wrong, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "TOKENIZER_MODEL":
                data = _spm_model(tmp_path, 30)
            dst.writestr(item, data)
    with pytest.raises(
        ChatError,
        match=r"does not match the model: it has 30 pieces, the "
        r"model predicts 262144 tokens",
    ):
        open_target(resolve_target(str(wrong)), OpenOptions(runtime="interpreter"))
    # a damaged .litertlm and a .task that is not a zip
    fake = tmp_path / "fake.litertlm"
    fake.write_bytes(b"\0" * 64)
    with pytest.raises(ChatError, match=r"fake\.litertlm"):
        open_target(resolve_target(str(fake)))
    broken = tmp_path / "broken.task"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ChatError, match=r"not a usable \.task bundle"):
        open_target(resolve_target(str(broken)))
    # a bare .tflite without a tokenizer beside it
    lonely = tmp_path / "lonely" / "model.tflite"
    lonely.parent.mkdir()
    lonely.write_bytes((yes_export / f"{yes_export.name}.tflite").read_bytes())
    with pytest.raises(ChatError, match="holds no tokenizer"):
        open_target(resolve_target(str(lonely)))
    # a context larger than the bundle's KV cache
    with pytest.raises(ChatError, match="KV cache of 128 tokens"):
        open_target(resolve_target(str(task)), OpenOptions(context_length=4096))
    # the wrong runtime for the file
    with pytest.raises(ChatError, match="runs on LiteRT-LM only"):
        open_target(
            resolve_target(str(yes_export / f"{yes_export.name}.litertlm")),
            OpenOptions(runtime="interpreter"),
        )


# --------------------------------------------------------------------------- CLI


def test_cli_chat_one_shot_and_bad_model(yes_run, tmp_path: Path, capsys, monkeypatch):
    from gemma_tui.cli import main

    ws, _ = yes_run
    monkeypatch.setenv("GEMMA_TUI_WORKSPACE", str(ws.root))
    save = tmp_path / "t.jsonl"
    args = ["chat", "tiny-run", "--device", "cpu", "--context", "128", "--save", str(save)]
    args += ["--prompt", "What is 5 plus 5?", "--prompt", "What is 6 plus 6?"]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "Yes.\nYes.\n"
    assert "ended by the model" in err and "tok/s" in err
    row = json.loads(save.read_text())
    values = [t["value"] for t in row["conversations"]]
    assert values == ["What is 5 plus 5?", "Yes.", "What is 6 plus 6?", "Yes."]
    assert main(["chat", "no-such-run@3"]) == 2
    _, err = capsys.readouterr()
    assert "no run named 'no-such-run'" in err
    assert main(["chat", "tiny", "--top-p", "0"]) == 2
    assert "top-p 0.0 must be above 0" in capsys.readouterr().err


def test_numpy_is_enough_to_import_the_chat_module():
    """pipeline.inference.chat and .targets import no JAX (the TUI imports them)."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline.inference.chat, pipeline.inference.targets;"
        "bad = [m for m in ('jax', 'keras') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert np is not None
