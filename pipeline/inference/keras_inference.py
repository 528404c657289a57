"""The Keras/JAX chat backend: a base model (keras-hub weights), optionally with a run's LoRA
adapter (applied as its own path, or merged into the weights), decoding with a KV cache.

The prompt's tokens are compared with what the cache already holds (the conversation so far,
reply included), so the next message only prefills what is new. bf16 on a GPU, float32 on the
CPU (XLA's CPU bf16 is slow); float16 is refused for Gemma 3.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pipeline.errors import ChatError, PipelineError
from pipeline.events import EventSink, StopCheck, ignore_event, never_stop
from pipeline.inference.chat import GenDelta, GenDone, Sampling
from pipeline.inference.kv_decode import (
    bucket,
    cache_slots,
    decode_chunk,
    extend,
    init_cache,
    pick,
)
from pipeline.models.config import GemmaArch
from pipeline.models.tokenizer import END_OF_TURN_ID, EOS_ID, GemmaTokenizer

STOP_IDS = frozenset({EOS_ID, END_OF_TURN_ID})
DEFAULT_CONTEXT = 2048


def jax_platform(device: str) -> str:
    """ "cpu" or "gpu" for ``device`` ("auto", "cpu", "gpu"); ChatError if no GPU is visible."""
    import jax

    if device == "cpu":
        return "cpu"
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    if device == "gpu" and not has_gpu:
        raise ChatError(
            "no GPU is visible to JAX",
            hint="Install jax with CUDA (pip install 'jax[cuda12]') or choose the CPU.",
        )
    return "gpu" if has_gpu else "cpu"


class TextStream:
    """Reply ids -> new text, holding back a trailing partial UTF-8 character."""

    def __init__(self, tokenizer: GemmaTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.sent = text[self.sent :], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        new, self.sent = text[self.sent :], len(text)
        return new


class KerasBackend:
    """A loaded model that chats. Build it with :func:`open_keras_backend`."""

    kind = "keras"

    def __init__(
        self,
        params: Mapping[str, Any],
        adapter: Mapping[str, Any] | None,
        tokenizer: GemmaTokenizer,
        arch: GemmaArch,
        *,
        label: str,
        lora_scale: float = 1.0,
        dtype: str = "float32",
        context_length: int = DEFAULT_CONTEXT,
        device: Any = None,
        keep_alive: Any = None,
        chunk: int | None = None,
    ) -> None:
        import jax
        import jax.numpy as jnp

        self.tokenizer, self.arch, self.label = tokenizer, arch, label
        self.context_length = int(context_length)
        self.dtype = jnp.dtype(dtype)
        self.device = device or jax.devices()[0]
        self._keep = keep_alive  # the keras model whose arrays the params are
        with jax.default_device(self.device):
            self.params = jax.device_put(params, self.device)
            self.adapter = jax.device_put(adapter, self.device) if adapter is not None else None
            self.cache = init_cache(arch, cache_slots(self.context_length), self.dtype)
        self.cached: list[int] = []
        """Token ids whose keys and values are in the cache, from position 0."""
        donate = (2,) if self.device.platform != "cpu" else ()
        run = functools.partial(extend, arch=arch, lora_scale=lora_scale, dtype=self.dtype)

        def step(
            params, adapter, cache, tokens, start, last, key, temperature, top_p, greedy, top_k
        ):  # type: ignore[no-untyped-def]
            logits, cache = run(params, adapter, cache, tokens, start, last)
            return pick(logits, key, temperature, top_p, greedy=greedy, top_k=top_k), cache

        self._step = jax.jit(step, static_argnums=(9, 10), donate_argnums=donate)
        self.chunk = chunk or (1 if self.device.platform == "cpu" else 8)
        """Decode steps per device call: 8 on a GPU (the per-token host round trip costs
        more than the step), 1 on the CPU (a step costs far more than the round trip, and
        text then streams token by token)."""
        many = functools.partial(decode_chunk, arch=arch, lora_scale=lora_scale, dtype=self.dtype)
        self._chunk = jax.jit(
            many, static_argnames=("steps", "greedy", "top_k"), donate_argnums=donate
        )
        self._stop_ids = jnp.asarray(sorted(STOP_IDS), jnp.int32)

    def warmup(self) -> None:
        """Compile the shortest prefill chunk and the 1-token step (greedy) now, so the
        first message is answered at full speed."""
        import jax

        with jax.default_device(self.device):
            key = jax.random.PRNGKey(0)
            self._run([2, 2], 0, key, Sampling(max_new_tokens=1))
            self._run([2], 2, key, Sampling(max_new_tokens=1))
            if self.chunk > 1:
                self._next(2, 3, key, Sampling(max_new_tokens=2), 2)
        self.cached = []

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt))

    def _run(self, tokens: list[int], start: int, key: Any, s: Sampling) -> int:
        import jax.numpy as jnp
        import numpy as np

        size = bucket(len(tokens))
        buf = np.zeros((1, size), np.int32)
        buf[0, : len(tokens)] = tokens
        tok, self.cache = self._step(
            self.params,
            self.adapter,
            self.cache,
            jnp.asarray(buf),
            jnp.int32(start),
            jnp.int32(len(tokens) - 1),
            key,
            jnp.float32(max(s.temperature, 1e-6)),
            jnp.float32(s.top_p),
            s.greedy,
            int(s.top_k),
        )
        return int(tok)

    def _next(self, token: int, pos: int, key: Any, s: Sampling, remaining: int) -> list[int]:
        """Feed ``token`` at ``pos``; the tokens picked after it (up to ``self.chunk`` and
        ``remaining``; ends early at a stop token, which is then the last)."""
        import jax.numpy as jnp
        import numpy as np

        if self.chunk == 1 or remaining <= 1:
            return [self._run([token], pos, key, s)]
        out, n, self.cache = self._chunk(
            self.params,
            self.adapter,
            self.cache,
            jnp.int32(token),
            jnp.int32(pos),
            key,
            jnp.float32(max(s.temperature, 1e-6)),
            jnp.float32(s.top_p),
            jnp.int32(remaining),
            self._stop_ids,
            steps=self.chunk,
            greedy=s.greedy,
            top_k=int(s.top_k),
        )
        got = np.asarray(out)
        return [int(t) for t in got[: int(n)]]

    def generate(
        self, prompt: str, sampling: Sampling, should_stop: Callable[[], bool]
    ) -> Iterator[GenDelta | GenDone]:
        import jax

        t0 = time.perf_counter()
        ids = self.tokenizer.encode(prompt)
        if len(ids) + 1 > self.context_length:
            raise ChatError(
                f"the prompt is {len(ids)} tokens; this model was opened with a "
                f"{self.context_length}-token context",
                hint="Shorten the message or open the model with a longer context.",
            )
        # reuse the cache for the longest common prefix (at least one token is fed again)
        same = 0
        for a, b in zip(self.cached, ids, strict=False):
            if a != b:
                break
            same += 1
        same = min(same, len(ids) - 1)
        self.cached = ids[:same]
        base = jax.random.PRNGKey(sampling.seed or 0)
        counter = 0

        def key() -> Any:
            nonlocal counter
            counter += 1
            return jax.random.fold_in(base, counter)

        pending = ids[same:]
        pos = same
        largest = bucket(1 << 30)
        with jax.default_device(self.device):
            try:
                while True:
                    chunk, pending = pending[:largest], pending[largest:]
                    token = self._run(chunk, pos, key(), sampling)
                    pos += len(chunk)
                    self.cached.extend(chunk)
                    if not pending:
                        break
                    if should_stop():
                        yield GenDone(
                            len(ids), 0, None, time.perf_counter() - t0, "stopped", len(ids) - same
                        )
                        return
                first = time.perf_counter() - t0
                text = TextStream(self.tokenizer)
                new = 0
                reason = "max_tokens"
                limit = min(sampling.max_new_tokens, self.context_length - len(ids))
                ahead = [token]  # picked, not yet shown
                while True:
                    token = ahead.pop(0)
                    if token in STOP_IDS:
                        reason = "stop_token"
                        break
                    new += 1
                    piece = text.push(token)
                    if piece:
                        yield GenDelta(piece)
                    if new >= limit:
                        break
                    if should_stop():
                        reason = "stopped"
                        break
                    if not ahead:
                        got = self._next(token, pos, key(), sampling, limit - new)
                        # the cache now holds token and every picked token but the last
                        self.cached.append(token)
                        self.cached.extend(got[:-1])
                        pos += len(got)
                        ahead = got
                rest = text.flush()
                if rest:
                    yield GenDelta(rest, 0)
            except PipelineError:
                self.cached = []
                raise
            except Exception as exc:
                self.cached = []
                raise ChatError(f"the model failed while generating: {exc}") from exc
        yield GenDone(
            prompt_tokens=len(ids),
            new_tokens=new,
            first_token_s=first,
            total_s=time.perf_counter() - t0,
            stop_reason=reason,  # type: ignore[arg-type]
            prefill_tokens=len(ids) - same,
        )

    def close(self) -> None:
        self.params = {}
        self.adapter = None
        self.cache = []
        self._keep = None


def open_keras_backend(
    model_source: str,
    *,
    checkpoint: Any = None,
    merge: bool = False,
    device: str = "auto",
    dtype: str | None = None,
    context_length: int = DEFAULT_CONTEXT,
    workspace: Any = None,
    on_event: EventSink = ignore_event,
    should_stop: StopCheck = never_stop,
    label: str | None = None,
    chunk: int | None = None,
) -> KerasBackend:
    """Load ``model_source`` (anything ``gemma-tui train`` takes as a model), plus the LoRA
    adapter of the checkpoint folder ``checkpoint`` (as a separate path, or merged into the
    weights when ``merge``), on ``device`` ("auto", "cpu", "gpu")."""
    from pipeline.models.backend import ensure_jax_backend
    from pipeline.models.sources import check_dtype

    ensure_jax_backend()
    import jax

    from pipeline.models.gemma3_jax import params_from_backbone
    from pipeline.models.loader import load_model

    platform = jax_platform(device)
    chosen = check_dtype(dtype or ("bfloat16" if platform == "gpu" else "float32"))
    dev = jax.devices(platform)[0]
    ckpt = None
    if checkpoint is not None:
        from pipeline.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
    with jax.default_device(dev):
        model = load_model(
            model_source,
            dtype=chosen,
            workspace=workspace,
            on_event=on_event,
            should_stop=should_stop,
        )
        adapter, scale, how = None, 1.0, ""
        if ckpt is not None:
            if ckpt.meta.arch.same_shape(model.arch) is False:
                raise ChatError(
                    f"the checkpoint {checkpoint} was trained on {ckpt.meta.arch.name}, "
                    f"not on {model.arch.name} ({model_source})",
                    hint="Chat with the checkpoint on the base model it was trained on.",
                )
            if merge:
                from pipeline.models.lora import merge_into_backbone

                merge_into_backbone(model.backbone, ckpt.adapter, ckpt.meta)
                how = " + LoRA merged"
            else:
                adapter, scale, how = ckpt.adapter, ckpt.meta.scale, " + LoRA"
        params = params_from_backbone(model.backbone)
    text = label or f"{model.description}{how} · Keras/JAX on {platform}"
    backend = KerasBackend(
        params,
        adapter,
        model.tokenizer,
        model.arch,
        label=text,
        lora_scale=scale,
        dtype=chosen,
        context_length=context_length,
        device=dev,
        keep_alive=model,
        chunk=chunk,
    )
    backend.warmup()
    return backend
