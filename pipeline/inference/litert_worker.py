"""The chat worker for exported bundles: runs in the export environment (it has LiteRT-LM
and ``ai_edge_litert``; the main one does not) as
``python -m pipeline.inference.litert_worker CONFIG_JSON`` and stays up for a whole chat.

CONFIG: ``{"path", "runtime": "litert_lm"|"interpreter", "threads", "context",
"tokenizer": path or null, "cache_dir"}``.

It answers on stdout, one JSON object per line after :data:`MARK` (the libraries' own
chatter goes to stderr): ``ready`` (with the context length and stop ids) or ``error``, then
per command. Commands come on stdin, one JSON object per line:

- ``{"cmd": "count", "id": N, "text": PROMPT}`` -> ``{"event": "count", "id", "n"}``
- ``{"cmd": "generate", "id": N, "text": PROMPT, "sampling": {...}}`` -> ``delta`` events
  (``text``, ``tokens``) then ``done`` (``prompt_tokens``, ``new_tokens``, ``first_token_s``,
  ``total_s``, ``stop_reason``, ``prefill_tokens``), or ``failed`` with a message;
- ``{"cmd": "stop", "id": N}``: generation N ends after the current token (read by a thread,
  so it works while generating);
- ``{"cmd": "quit"}`` or end of input: exit.

PROMPT is the chat template text starting with ``<bos>``; the runtimes add BOS themselves
(LiteRT-LM's session, or id 2 here for the interpreter), so it is taken off first.

Two runtimes:

- ``litert_lm``: ``litert_lm.Engine`` on the ``.litertlm`` / ``.task`` file, a fresh session
  per message with ``apply_prompt_template=False`` (the prompt is already templated by the
  training code) and the whole conversation prefilled; the engine stops on the bundle's stop
  tokens.
- ``interpreter``: the ``ai_edge_litert`` signature loop (:class:`pipeline.export.worker.
  TfliteLoop`) on a ``.tflite`` (tokenizer given) or on the model inside a ``.task`` (its own
  tokenizer and METADATA stop tokens). Its KV cache is kept between messages: a new prompt
  only prefills what differs from the tokens already in the cache.
"""

# pyright: reportMissingImports=false
# (litert_lm and ai_edge_litert live in the export environment only)
from __future__ import annotations

import json
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

MARK = "@@gemma-tui-chat@@ "
BOS_TEXT = "<bos>"
BOS_ID, EOS_ID, END_OF_TURN_ID = 2, 1, 106
STOP_TEXTS = ("<end_of_turn>", "<eos>")
_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    line = MARK + json.dumps({"event": event, **fields}) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class Problem(Exception):
    """A failure with a hint for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def body(prompt: str) -> str:
    return prompt[len(BOS_TEXT) :] if prompt.startswith(BOS_TEXT) else prompt


class Stops:
    """Which generation ids were asked to stop (set by the stdin thread)."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, gid: int) -> None:
        with self._lock:
            self._ids.add(gid)

    def asked(self, gid: int) -> bool:
        with self._lock:
            return gid in self._ids


# --------------------------------------------------------------------------- LiteRT-LM


class EngineModel:
    def __init__(self, cfg: dict[str, Any]) -> None:
        import litert_lm

        self.lm = litert_lm
        cache = Path(cfg["cache_dir"])
        cache.mkdir(parents=True, exist_ok=True)
        self.context = int(cfg["context"])
        try:
            self.engine = litert_lm.Engine(
                str(cfg["path"]),
                backend=litert_lm.Backend.CPU(thread_count=int(cfg["threads"])),
                max_num_tokens=self.context,
                cache_dir=str(cache),
            )
        except RuntimeError as exc:
            raise Problem(
                f"LiteRT-LM cannot open {cfg['path']}: {exc}",
                "The file is damaged or not a LiteRT-LM bundle; export it again.",
            ) from exc
        self.stop_ids = sorted({i for ids in self.engine.eos_token_ids for i in ids})

    def count(self, prompt: str) -> int:
        return len(self.engine.tokenize(body(prompt))) + 1

    def generate(self, gid: int, prompt: str, s: dict[str, Any], stops: Stops) -> None:
        lm = self.lm
        if float(s["temperature"]) <= 0:
            sampler = lm.SamplerConfig(top_k=1, temperature=0.0)
        else:
            sampler = lm.SamplerConfig(
                top_k=int(s["top_k"]) or None,
                top_p=float(s["top_p"]),
                temperature=float(s["temperature"]),
                seed=s.get("seed"),
            )
        max_new = int(s["max_new_tokens"])
        start = time.perf_counter()
        text = body(prompt)
        prompt_tokens = len(self.engine.tokenize(text)) + 1
        session = self.engine.create_session(
            apply_prompt_template=False, sampler_config=sampler, max_output_tokens=max_new
        )
        pieces: list[str] = []
        first = None
        stopped = False
        trailing = ""
        try:
            session.run_prefill([text])
            for response in session.run_decode_async():
                chunk = response.texts[0] if response.texts else ""
                if first is None:
                    first = time.perf_counter() - start
                if chunk in STOP_TEXTS:  # never shown (the engine normally keeps it back)
                    trailing += chunk
                elif chunk and not stopped:
                    pieces.append(chunk)
                    emit("delta", id=gid, text=chunk, tokens=1)
                if not stopped and stops.asked(gid):
                    stopped = True
                    session.cancel_process()
        finally:
            session.close()
        new = len(pieces)  # the engine streams one chunk per token
        reason = "stopped" if stopped else ("max_tokens" if new >= max_new else "stop_token")
        emit(
            "done",
            id=gid,
            prompt_tokens=prompt_tokens,
            new_tokens=new,
            first_token_s=first,
            total_s=time.perf_counter() - start,
            stop_reason=reason,
            prefill_tokens=prompt_tokens,
            trailing=trailing,
        )


# --------------------------------------------------------------------------- interpreter


def _logits_size(loop: Any) -> int:
    out = loop.decode.get_output_details()
    return int(out["logits"]["shape"][-1])


class LoopModel:
    def __init__(self, cfg: dict[str, Any]) -> None:
        import numpy as np
        import sentencepiece as spm

        from pipeline.export.worker import TfliteLoop, stop_ids_from, task_contents

        self.np = np
        path = Path(cfg["path"])
        if path.suffix == ".task":
            try:
                model, tokenizer, metadata = task_contents(path)
            except (ValueError, OSError) as exc:
                raise Problem(f"cannot read {path}: {exc}") from exc
            where = f"{path} (TOKENIZER_MODEL)"
        else:
            model = str(path)
            tok = cfg.get("tokenizer")
            if not tok:
                raise Problem(
                    f"{path.name} holds no tokenizer",
                    "Put the export's .task beside it, or give a tokenizer.model.",
                )
            tok_path = Path(tok)
            if tok_path.suffix == ".task":
                _, tokenizer, _ = task_contents(tok_path)
            else:
                tokenizer = tok_path.read_bytes()
            metadata = b""
            where = str(tok_path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(tokenizer)
        except Exception as exc:
            raise Problem(f"the tokenizer in {where} is not a SentencePiece model: {exc}") from exc
        try:
            self.loop = TfliteLoop(model, int(cfg["threads"]))
        except Exception as exc:
            raise Problem(
                f"the TFLite interpreter cannot load {path}: {exc}",
                "The file is damaged or was not made by `gemma-tui export`; export it again.",
            ) from exc
        vocab, size = self.sp.GetPieceSize(), _logits_size(self.loop)
        if vocab != size:
            raise Problem(
                f"the tokenizer in {where} does not match the model: it has {vocab} pieces, "
                f"the model predicts {size} tokens",
                "Use the tokenizer the bundle was exported with (the export's own .task).",
            )
        stop = stop_ids_from(tokenizer, metadata, list(STOP_TEXTS)) if metadata else set()
        self.stop_ids = sorted(stop or {EOS_ID, END_OF_TURN_ID})
        self.context = int(self.loop.kv_len)
        self.cached: list[int] = []

    def ids(self, prompt: str) -> list[int]:
        return [BOS_ID, *self.sp.EncodeAsIds(body(prompt))]

    def count(self, prompt: str) -> int:
        return len(self.ids(prompt))

    def _pick(self, logits: Any, s: dict[str, Any], rng: Any) -> int:
        np = self.np
        if float(s["temperature"]) <= 0:
            return int(np.argmax(logits))
        x = logits.astype(np.float64) / float(s["temperature"])
        k = int(s["top_k"])
        idx = np.argpartition(-x, k - 1)[:k] if 0 < k < x.size else np.arange(x.size)
        idx = idx[np.argsort(-x[idx])]
        p = np.exp(x[idx] - x[idx[0]])
        p /= p.sum()
        keep = (np.cumsum(p) - p) < float(s["top_p"])
        p = np.where(keep, p, 0.0)
        p /= p.sum()
        return int(idx[rng.choice(idx.size, p=p)])

    def generate(self, gid: int, prompt: str, s: dict[str, Any], stops: Stops) -> None:
        np = self.np
        start = time.perf_counter()
        ids = self.ids(prompt)
        max_new = min(int(s["max_new_tokens"]), self.context - len(ids))
        if max_new < 1:
            raise Problem(f"the prompt is {len(ids)} tokens; the KV cache holds {self.context}")
        same = 0
        for a, b in zip(self.cached, ids, strict=False):
            if a != b:
                break
            same += 1
        same = min(same, len(ids) - 1)
        loop = self.loop
        loop.pos = same
        self.cached = ids[:same]
        loop.feed(ids[same:-1])
        self.cached = ids[:-1]
        rng = np.random.default_rng(s.get("seed"))
        token, out, first, reason = ids[-1], [], None, "max_tokens"
        sent = ""
        while True:
            logits = loop.step(token)
            self.cached.append(token)
            token = self._pick(logits, s, rng)
            if first is None:
                first = time.perf_counter() - start
            if token in self.stop_ids:
                reason = "stop_token"
                break
            out.append(token)
            text = self.sp.DecodeIds(out)
            if not text.endswith("\ufffd") and len(text) > len(sent):
                emit("delta", id=gid, text=text[len(sent) :], tokens=1)
                sent = text
            if len(out) >= max_new:
                break
            if stops.asked(gid):
                reason = "stopped"
                break
        text = self.sp.DecodeIds(out)
        if len(text) > len(sent):
            emit("delta", id=gid, text=text[len(sent) :], tokens=0)
        emit(
            "done",
            id=gid,
            prompt_tokens=len(ids),
            new_tokens=len(out),
            first_token_s=first,
            total_s=time.perf_counter() - start,
            stop_reason=reason,
            prefill_tokens=len(ids) - same,
        )


# --------------------------------------------------------------------------- main


def _reader(commands: queue.Queue[dict[str, Any] | None], stops: Stops) -> None:
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        if cmd.get("cmd") == "stop":
            stops.add(int(cmd.get("id", -1)))
        else:
            commands.put(cmd)
    commands.put(None)


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    try:
        model: EngineModel | LoopModel = (
            EngineModel(cfg) if cfg["runtime"] == "litert_lm" else LoopModel(cfg)
        )
    except Problem as exc:
        emit("error", message=exc.message, hint=exc.hint)
        return 2
    except Exception as exc:  # a library failure: say what it was
        emit("error", message=f"{type(exc).__name__}: {exc}", hint=None)
        traceback.print_exc()
        return 2
    emit("ready", context=model.context, stop_ids=model.stop_ids)
    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    stops = Stops()
    threading.Thread(target=_reader, args=(commands, stops), daemon=True).start()
    while True:
        cmd = commands.get()
        if cmd is None or cmd.get("cmd") == "quit":
            return 0
        gid = int(cmd.get("id", 0))
        try:
            if cmd["cmd"] == "count":
                emit("count", id=gid, n=model.count(str(cmd["text"])))
            elif cmd["cmd"] == "generate":
                model.generate(gid, str(cmd["text"]), dict(cmd["sampling"]), stops)
        except Problem as exc:
            emit("failed", id=gid, message=exc.message, hint=exc.hint)
        except Exception as exc:
            traceback.print_exc()
            if isinstance(model, LoopModel):
                model.cached = []  # the cache may hold a half-fed prompt
            emit("failed", id=gid, message=f"{type(exc).__name__}: {exc}", hint=None)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
