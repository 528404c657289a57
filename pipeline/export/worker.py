"""The export worker: runs inside the export environment (``scripts/make_export_env.sh``),
never in the main one, as ``python -m pipeline.export.worker PLAN.json``.

It does the parts that need litert-torch, TensorFlow, MediaPipe and LiteRT-LM:

1. ``load``: the merged Hugging Face checkpoint into litert-torch's re-authored Gemma 3
   (``build_decoder_only_model`` with a config made from ``config.json``, so the 1B, the
   270M and the tiny test shape all go through one path and a name mismatch is an error,
   not the ``None`` that ``build_model_1b`` returns);
2. ``convert``: ``converter.convert_to_tflite`` with prefill and decode signatures, an
   external KV cache (mask as input, transposed layout, as Google's Gemma 3 CLI does) and
   the requested quantization;
3. ``bundle_task`` / ``bundle_litertlm``: MediaPipe's bundler and litert-torch's LiteRT-LM
   builder, with the start and stop tokens and the Gemma 3 turn template of the plan;
4. ``verify_*``: greedy generation from each bundle on the plan's prompts: an
   ``ai_edge_litert`` interpreter loop over the bundle's own model, tokenizer and stop
   tokens (token ids, for agreement), and LiteRT-LM's engine on the bundle file (text, and
   whether it stopped by itself).

It speaks on stdout, one JSON object per line after :data:`MARK`; everything else the
libraries print is left to stderr or unmarked lines, which the parent keeps in the export
log. At module level it imports only the standard library and :mod:`pipeline.export.bundle`
(the ``.task`` member names; standard library only): the heavy packages load inside the
stages, so a missing one is reported as an event, not a traceback.
"""

# pyright: reportMissingImports=false
# (litert-torch, torch, mediapipe and litert_lm live in the export environment only)
from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

from pipeline.export.bundle import TASK_METADATA, TASK_TFLITE, TASK_TOKENIZER

MARK = "@@gemma-tui-export@@ "
"""Prefix of the worker's event lines on stdout."""


def emit(event: str, **fields: Any) -> None:
    """One event line for the parent."""
    line = MARK + json.dumps({"event": event, **fields}, default=str)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- memory


class PeakRss:
    """The process's resident set: sampled every 0.25 s (for a live figure) and
    ``ru_maxrss`` (the true peak) at the end."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def current() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(0.25)

    def max(self) -> int:
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(self.peak, ru)


class Stage:
    """``with Stage("convert", rss):`` emits stage start and done (seconds, peak RSS) and,
    on an exception, a ``failed`` event with the message and the traceback."""

    def __init__(self, name: str, rss: PeakRss, detail: str = "") -> None:
        self.name, self.rss, self.detail = name, rss, detail
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Stage:
        self.start = time.perf_counter()
        emit("stage", stage=self.name, status="start", detail=self.detail)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        seconds = time.perf_counter() - self.start
        if exc is None:
            emit(
                "stage",
                stage=self.name,
                status="done",
                seconds=round(seconds, 3),
                peak_rss=self.rss.max(),
                **self.info,
            )
            return
        emit(
            "stage",
            stage=self.name,
            status="failed",
            seconds=round(seconds, 3),
            error=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc_type, exc, tb))[-4000:],
        )


# --------------------------------------------------------------------------- load


def litert_config(hf_dir: Path) -> Any:
    """litert-torch's Gemma 3 decoder config for the checkpoint's ``config.json``: Google's
    1B config with every shape field replaced, so the layer pattern (every 6th layer global,
    RoPE bases 1e6 / 1e4), the norms and the tied embedding stay theirs."""
    from litert_torch.generative.examples.gemma3 import decoder

    cfg_json = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    text = cfg_json.get("text_config", cfg_json)
    head_dim = int(text["head_dim"])
    if int(text.get("query_pre_attn_scalar", head_dim)) != head_dim:
        raise ValueError(
            "litert-torch scales attention by 1/sqrt(head_dim); this checkpoint's "
            f"query_pre_attn_scalar {text['query_pre_attn_scalar']} differs from head_dim "
            f"{head_dim}"
        )
    cfg = decoder.get_decoder_config_1b()
    layers = int(text["num_hidden_layers"])
    if layers > len(cfg.block_configs):
        raise ValueError(f"{layers} layers: litert-torch's Gemma 3 config has at most 26")
    cfg.vocab_size = int(text["vocab_size"])
    cfg.num_layers = layers
    cfg.embedding_dim = int(text["hidden_size"])
    cfg.embedding_scale = cfg.embedding_dim**0.5
    cfg.block_configs = cfg.block_configs[:layers]
    for block in cfg.block_configs:
        block.attn_config.num_heads = int(text["num_attention_heads"])
        block.attn_config.head_dim = head_dim
        block.attn_config.num_query_groups = int(text["num_key_value_heads"])
        block.attn_config.sliding_window_size = int(text["sliding_window"])
        block.ff_config.intermediate_size = int(text["intermediate_size"])
    return cfg


def fix_zero_rows(model: Any) -> list[str]:
    """Replace all-zero rows of 2-D weights with 1e-6 noise: blockwise INT4 gives such a row
    a scale of 0, which XNNPACK refuses at run time (research P6). Returns what changed."""
    import torch

    changed = []
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 2:
                continue
            zero = (p == 0).all(dim=1)
            n = int(zero.sum())
            if n:
                noise = torch.randn(n, p.shape[1], generator=gen) * 1e-6
                p[zero] = noise.to(p.dtype)
                changed.append(f"{name}: {n} all-zero row(s)")
    return changed


def load_model(plan: dict[str, Any], rss: PeakRss) -> Any:
    from litert_torch.generative.examples.gemma3 import decoder
    from litert_torch.generative.utilities import model_builder

    hf_dir = Path(plan["hf_dir"])
    with Stage("load", rss, detail=str(hf_dir)) as st:
        cfg = litert_config(hf_dir)
        model = model_builder.build_decoder_only_model(
            checkpoint_path=str(hf_dir),
            config=cfg,
            tensor_names=decoder.TENSOR_NAMES_SEP_QKV,
            model_class=decoder.Decoder,
            mask_cache_size=0,
        )
        if model is None:
            raise ValueError(f"litert-torch could not build Gemma 3 from {hf_dir}")
        model.eval()
        if plan["quant"].startswith("dynamic_int4"):
            changed = fix_zero_rows(model)
            if changed:
                emit(
                    "log",
                    message="INT4: replaced all-zero rows with 1e-6 noise: " + "; ".join(changed),
                )
        st.info["parameters"] = sum(p.numel() for p in model.parameters())
    return model


# --------------------------------------------------------------------------- convert


def convert(plan: dict[str, Any], model: Any, rss: PeakRss) -> Path:
    from litert_torch.generative.layers import kv_cache as kv_utils
    from litert_torch.generative.utilities import converter
    from litert_torch.generative.utilities import export_config as ecfg

    out_dir = Path(plan["work_dir"])
    prefill = [int(x) for x in plan["prefill_lens"]]
    detail = f"{plan['quant']}, prefill {prefill}, KV cache {plan['kv_len']}"
    with Stage("convert", rss, detail=detail) as st:
        export_config = ecfg.ExportConfig()
        export_config.mask_as_input = True
        export_config.kvcache_layout = kv_utils.KV_LAYOUT_TRANSPOSED
        converter.convert_to_tflite(
            model,
            output_path=str(out_dir),
            output_name_prefix=plan["name"],
            prefill_seq_len=prefill if len(prefill) > 1 else prefill[0],
            kv_cache_max_len=int(plan["kv_len"]),
            quantize=plan["quant"],
            export_config=export_config,
        )
        made = sorted(out_dir.glob(f"{plan['name']}*.tflite"))
        if len(made) != 1:
            raise RuntimeError(f"expected one .tflite in {out_dir}, found {[p.name for p in made]}")
        tflite = out_dir / f"{plan['name']}.tflite"
        made[0].replace(tflite)
        st.info["file"] = str(tflite)
        st.info["bytes"] = tflite.stat().st_size
    return tflite


# --------------------------------------------------------------------------- bundle


def bundle_task(plan: dict[str, Any], tflite: Path, rss: PeakRss) -> Path:
    from mediapipe.tasks.python.genai import bundler

    out = Path(plan["work_dir"]) / f"{plan['name']}.task"
    t = plan["template"]
    with Stage("bundle_task", rss, detail=out.name) as st:
        bundler.create_bundle(
            bundler.BundleConfig(
                tflite_model=str(tflite),
                tokenizer_model=plan["tokenizer"],
                start_token=plan["start_token"],
                stop_tokens=list(plan["stop_tokens"]),
                output_filename=str(out),
                prompt_prefix_user=t["user_prefix"],
                prompt_suffix_user=t["user_suffix"],
                prompt_prefix_model=t["model_prefix"],
                prompt_suffix_model=t["model_suffix"],
            )
        )
        st.info["file"] = str(out)
        st.info["bytes"] = out.stat().st_size
    return out


def bundle_litertlm(plan: dict[str, Any], tflite: Path, rss: PeakRss) -> Path:
    import tempfile

    from litert_torch.generative.utilities import litertlm_builder

    work = Path(plan["work_dir"])
    out = work / f"{plan['name']}.litertlm"
    t = plan["template"]
    with Stage("bundle_litertlm", rss, detail=out.name) as st:
        with (
            tempfile.TemporaryDirectory(dir=work) as tmp,
            tempfile.TemporaryDirectory(dir=work) as dest,
        ):
            litertlm_builder.build_litertlm(
                tflite_model_path=str(tflite),
                workdir=tmp,
                output_path=dest,
                context_length=int(plan["kv_len"]),
                model_prompt_prefix=t["model_prefix"],
                model_prompt_suffix=t["model_suffix"],
                user_prompt_prefix=t["user_prefix"],
                user_prompt_suffix=t["user_suffix"],
                tokenizer_model_path=plan["tokenizer"],
                start_token=plan["start_token"],
                stop_tokens=list(plan["stop_tokens"]),
                llm_model_type="gemma3",
            )
            made = sorted(Path(dest).glob("*.litertlm"))
            if len(made) != 1:
                raise RuntimeError(f"LiteRT-LM builder wrote {[p.name for p in made]}")
            made[0].replace(out)
        st.info["file"] = str(out)
        st.info["bytes"] = out.stat().st_size
    return out


# --------------------------------------------------------------------------- run


class TfliteLoop:
    """Greedy decoding over a converted model's signatures with the ``ai_edge_litert``
    interpreter: prefill all prompt tokens but the last (prefill returns no logits), then
    decode one token at a time, carrying the KV cache. The mask is an input: 0 where a key
    position is at or before the query's, -inf elsewhere."""

    def __init__(self, model: bytes | str, threads: int) -> None:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        self.np = np
        if isinstance(model, bytes):
            self.interp = Interpreter(model_content=model, num_threads=threads)
        else:
            self.interp = Interpreter(model_path=model, num_threads=threads)
        sigs = self.interp.get_signature_list()
        self.decode = self.interp.get_signature_runner("decode")
        self.prefill = {
            int(k.split("_")[1]): self.interp.get_signature_runner(k)
            for k in sigs
            if k.startswith("prefill_")
        }
        details = self.decode.get_input_details()
        self.kv_names = [n for n in details if n.startswith("kv_cache")]
        self.kv_spec = {n: (tuple(details[n]["shape"]), details[n]["dtype"]) for n in self.kv_names}
        self.kv_len = int(details["mask"]["shape"][-1])
        self.reset()

    def reset(self) -> None:
        self.kv = {n: self.np.zeros(s, d) for n, (s, d) in self.kv_spec.items()}
        self.pos = 0

    def _mask(self, rows: Any) -> Any:
        np = self.np
        keys = np.arange(self.kv_len)[None]
        m = np.where(keys <= np.asarray(rows)[:, None], 0.0, -np.inf).astype(np.float32)
        return m[None, None]

    def _run(self, runner: Any, tokens: Any, pos: Any) -> Any:
        out = runner(tokens=tokens, input_pos=pos, mask=self._mask(pos), **self.kv)
        for n in self.kv_names:
            self.kv[n] = out[n]
        return out

    def feed(self, ids: list[int]) -> None:
        np = self.np
        while ids:
            fits = [n for n in self.prefill if n >= len(ids)]
            size = min(fits) if fits else max(self.prefill)
            chunk, ids = ids[:size], ids[size:]
            tokens = np.zeros((1, size), np.int32)
            tokens[0, : len(chunk)] = chunk
            pos = np.minimum(np.arange(self.pos, self.pos + size, dtype=np.int32), self.kv_len - 1)
            self._run(self.prefill[size], tokens, pos)
            self.pos += len(chunk)

    def step(self, token: int) -> Any:
        np = self.np
        out = self._run(self.decode, np.array([[token]], np.int32), np.array([self.pos], np.int32))
        self.pos += 1
        return out["logits"][0, -1]

    def forced(self, prompt: list[int], continuation: list[int]) -> list[int]:
        """Teacher-forced argmax: after the prompt and each token of ``continuation``, the
        token the model ranks first (``len(continuation) + 1`` predictions; the last one is
        what follows the whole continuation, e.g. its stop token)."""
        np = self.np
        self.reset()
        self.feed(list(prompt[:-1]))
        return [int(np.argmax(self.step(t))) for t in [prompt[-1], *continuation]]

    def greedy(self, prompt: list[int], max_new: int, stop_ids: set[int]) -> dict[str, Any]:
        """``{"ids": continuation, "stopped": stop id or None, "first_token_s", "decode_s"}``."""
        np = self.np
        if len(prompt) + max_new > self.kv_len:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + {max_new} new exceeds the KV cache of "
                f"{self.kv_len}"
            )
        self.reset()
        start = time.perf_counter()
        self.feed(list(prompt[:-1]))
        token, out, stopped, first = prompt[-1], [], None, None
        for _ in range(max_new):
            token = int(np.argmax(self.step(token)))
            if first is None:
                first = time.perf_counter() - start
            if token in stop_ids:
                stopped = token
                break
            out.append(token)
        total = time.perf_counter() - start
        return {"ids": out, "stopped": stopped, "first_token_s": first, "total_s": total}


def task_contents(path: Path) -> tuple[bytes, bytes, bytes]:
    """(tflite, tokenizer, metadata) of a ``.task`` zip, reading members by name only (never
    extracting to disk)."""
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        missing = {TASK_TFLITE, TASK_TOKENIZER} - names
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}")
        meta = z.read(TASK_METADATA) if TASK_METADATA in names else b""
        return z.read(TASK_TFLITE), z.read(TASK_TOKENIZER), meta


def stop_ids_from(tokenizer: bytes, metadata: bytes, candidates: list[str]) -> set[int]:
    """Ids of the stop tokens the bundle's METADATA names (a candidate counts when its text
    is in the metadata proto)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tokenizer)
    return {sp.piece_to_id(t) for t in candidates if t.encode() in metadata}


def interpreter_runs(plan: dict[str, Any], loop: TfliteLoop, stop_ids: set[int]) -> list[Any]:
    """Free-running greedy replies and teacher-forced predictions for every prompt."""
    v = plan["verify"]
    new = int(v["max_new_tokens"])
    results = []
    for prompt, reference in zip(v["prompts"], v["references"], strict=True):
        result = loop.greedy(list(prompt), new, stop_ids)
        # the reference's own tokens (its stop token excluded) fed back one at a time
        result["forced"] = loop.forced(list(prompt), [int(t) for t in reference])
        results.append(result)
    return results


def verify_task(plan: dict[str, Any], bundle: Path, rss: PeakRss) -> None:
    """The interpreter on what the ``.task`` holds: its model, tokenizer and stop tokens."""
    v = plan["verify"]
    with Stage("verify_task", rss, detail=f"{len(v['prompts'])} prompts") as st:
        model, tokenizer, metadata = task_contents(bundle)
        stop_ids = stop_ids_from(tokenizer, metadata, list(plan["stop_tokens"]))
        loop = TfliteLoop(model, int(v.get("threads", 2)))
        results = interpreter_runs(plan, loop, stop_ids)
        st.info["runtime"] = "ai_edge_litert interpreter (bundle's model, tokenizer, stop tokens)"
        st.info["stop_ids"] = sorted(stop_ids)
        emit("generated", bundle="task", runtime="interpreter", results=results)


def verify_tflite(plan: dict[str, Any], tflite: Path, rss: PeakRss) -> None:
    """The interpreter on the converted model itself (no ``.task`` was asked for)."""
    v = plan["verify"]
    with Stage("verify_tflite", rss, detail=f"{len(v['prompts'])} prompts"):
        loop = TfliteLoop(str(tflite), int(v.get("threads", 2)))
        results = interpreter_runs(plan, loop, {int(i) for i in plan["stop_ids"]})
        emit("generated", bundle="tflite", runtime="interpreter", results=results)


def run_engine(
    path: Path, texts: list[str], max_new: int, kv_len: int, cache: Path, threads: int = 2
) -> list[Any]:
    """Greedy replies of LiteRT-LM's engine to each text (a fresh conversation each)."""
    import litert_lm

    cache.mkdir(parents=True, exist_ok=True)
    engine = litert_lm.Engine(
        str(path),
        backend=litert_lm.Backend.CPU(thread_count=threads),
        max_num_tokens=kv_len,
        cache_dir=str(cache),
    )
    replies = []
    with engine:
        for text in texts:
            conv = engine.create_conversation(
                sampler_config=litert_lm.SamplerConfig(top_k=1, temperature=0.0),
                max_output_tokens=max_new,
            )
            with conv:
                start = time.perf_counter()
                reply = conv.send_message(text)
                seconds = time.perf_counter() - start
            contents = getattr(reply, "contents", None)
            out = contents[0].text if contents else str(reply)
            replies.append({"text": out, "total_s": seconds})
    return replies


def verify_engine(plan: dict[str, Any], bundle: Path, kind: str, rss: PeakRss) -> None:
    v = plan["verify"]
    with Stage(
        f"verify_{kind}_engine", rss, detail=f"LiteRT-LM engine, {len(v['texts'])} prompts"
    ) as st:
        replies = run_engine(
            bundle,
            list(v["texts"]),
            int(v["max_new_tokens"]),
            int(plan["kv_len"]),
            Path(plan["work_dir"]) / ".lm-cache",
            int(v.get("threads", 2)),
        )
        st.info["runtime"] = "litert_lm.Engine"
        emit("generated", bundle=kind, runtime="litert_lm", results=replies)


def generate(plan: dict[str, Any], rss: PeakRss) -> int:
    """``{"mode": "generate", "bundle", "texts", "max_new_tokens", "kv_len", "cache_dir"}``:
    LiteRT-LM's greedy reply to each text (a fresh conversation each)."""
    bundle = Path(plan["bundle"])
    try:
        with Stage("generate", rss, detail=bundle.name):
            replies = run_engine(
                bundle,
                list(plan["texts"]),
                int(plan["max_new_tokens"]),
                int(plan["kv_len"]),
                Path(plan["cache_dir"]),
                int(plan.get("threads", 2)),
            )
            emit(
                "generated", bundle=bundle.suffix.lstrip("."), runtime="litert_lm", results=replies
            )
    except Exception:
        emit("done", ok=False, peak_rss=rss.max())
        return 1
    emit("done", ok=True, peak_rss=rss.max())
    return 0


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in (
        "litert-torch",
        "torch",
        "tensorflow",
        "ai-edge-litert",
        "ai-edge-quantizer",
        "litert-converter",
        "mediapipe",
        "litert-lm-api",
        "litert-lm-builder",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pipeline.export.worker PLAN.json", file=sys.stderr)
        return 2
    plan = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    rss = PeakRss()
    emit("hello", pid=os.getpid(), python=sys.version.split()[0], versions=versions())
    if plan.get("mode") == "generate":
        return generate(plan, rss)
    try:
        model = load_model(plan, rss)
        tflite = convert(plan, model, rss)
        del model
        bundles: dict[str, Path] = {}
        if "task" in plan["formats"]:
            bundles["task"] = bundle_task(plan, tflite, rss)
        if "litertlm" in plan["formats"]:
            bundles["litertlm"] = bundle_litertlm(plan, tflite, rss)
        if plan.get("verify"):
            if "task" in bundles:
                verify_task(plan, bundles["task"], rss)
            else:
                verify_tflite(plan, tflite, rss)
            for kind, path in bundles.items():
                verify_engine(plan, path, kind, rss)
        if "tflite" not in plan["formats"]:
            tflite.unlink()
    except Exception:  # the failed stage has been reported with its traceback
        emit("done", ok=False, peak_rss=rss.max())
        return 1
    emit("done", ok=True, peak_rss=rss.max())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
