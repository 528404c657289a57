"""Gemma 3 decoding with a KV cache, in JAX, over the training forward's weights.

The same function as :func:`pipeline.models.gemma3_jax.hidden_states` (same blocks, same
LoRA path, so a checkpoint answers with or without merging), computed incrementally: each
call runs ``T`` new tokens at positions ``start .. start+T-1``, writes their keys and values
into a fixed-size cache and attends over the cache with a causal (and, on local layers,
sliding-window) mask. Then it picks the next token on the device (greedy, or temperature +
top-k + top-p), so only one int crosses to the host per token.

Compiles once per chunk length: prompts are fed in chunks padded to :data:`BUCKETS`, and
decoding is the 1-token chunk, so a chat compiles a handful of programs, not one per message.
Padded rows write junk into cache slots past the prompt; every later query masks keys after
its own position, and those slots are overwritten before any query can see them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.models.config import GemmaArch
from pipeline.models.gemma3_jax import _rms_norm, attention_inputs, finish_block

BUCKETS = (32, 128, 512)
"""Prefill chunk lengths; a longer prompt is fed in chunks of the largest."""
_NEG_INF = -1e30


def bucket(n: int) -> int:
    """The chunk length that ``n`` tokens are padded to."""
    for b in BUCKETS:
        if n <= b:
            return b
    return BUCKETS[-1]


def cache_slots(context: int) -> int:
    """Cache rows for a context of ``context`` tokens (room for the last padded chunk)."""
    return context + BUCKETS[-1]


def init_cache(arch: GemmaArch, slots: int, dtype: Any) -> list[dict[str, Any]]:
    import jax.numpy as jnp

    shape = (1, slots, arch.num_key_value_heads, arch.head_dim)
    return [
        {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(arch.num_layers)
    ]


def extend(
    params: Mapping[str, Any],
    adapter: Mapping[str, Any] | None,
    cache: Sequence[Mapping[str, Any]],
    tokens: Any,
    start: Any,
    last: Any,
    *,
    arch: GemmaArch,
    lora_scale: float,
    dtype: Any,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``tokens [1, T]`` at positions ``start..``; returns (float32 logits ``[V]`` of row
    ``last``, the updated cache)."""
    import jax
    import jax.numpy as jnp

    embed = params["embed"]
    eps = arch.layer_norm_epsilon
    n, kv, hd = arch.num_query_heads, arch.num_key_value_heads, arch.head_dim
    g = n // kv
    t = tokens.shape[1]
    slots = cache[0]["k"].shape[1]
    x = jnp.take(embed, tokens, axis=0).astype(dtype)
    x = x * jnp.asarray(math.sqrt(arch.hidden_dim), dtype)
    qpos = start + jnp.arange(t, dtype=jnp.int32)  # [T]
    positions = qpos[None]
    keys = jnp.arange(slots, dtype=jnp.int32)
    causal = keys[None, :] <= qpos[:, None]  # [T, S]
    scale = jnp.asarray(1.0 / math.sqrt(hd), dtype)
    layers_adapter = adapter["layers"] if adapter is not None else None
    new_cache = []
    for i, w in enumerate(params["layers"]):
        lw = layers_adapter[i] if layers_adapter is not None else None
        q, k, v = attention_inputs(
            x, w, lw, layer=i, arch=arch, lora_scale=lora_scale, positions=positions
        )
        ck = jax.lax.dynamic_update_slice(
            cache[i]["k"], k.astype(cache[i]["k"].dtype), (0, start, 0, 0)
        )
        cv = jax.lax.dynamic_update_slice(
            cache[i]["v"], v.astype(cache[i]["v"].dtype), (0, start, 0, 0)
        )
        new_cache.append({"k": ck, "v": cv})
        mask = causal
        if arch.is_sliding(i):
            mask = mask & (qpos[:, None] - keys[None, :] < arch.sliding_window_size)
        qg = (q * scale).reshape(1, t, kv, g, hd)
        logits = jnp.einsum("btkgh,bskh->bkgts", qg, ck.astype(dtype)).astype(jnp.float32)
        logits = jnp.where(mask[None, None, None], logits, _NEG_INF)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        attn = jnp.einsum("bkgts,bskh->btkgh", probs, cv.astype(dtype)).reshape(1, t, n, hd)
        x = finish_block(x, attn, w, lw, lora_scale=lora_scale, eps=eps)
    row = jax.lax.dynamic_index_in_dim(x[0], last, keepdims=False)
    row = _rms_norm(row, params["final_norm"], eps)
    out = jnp.einsum("d,vd->v", row, embed.astype(dtype), preferred_element_type=jnp.float32)
    return out, new_cache


def pick(logits: Any, key: Any, temperature: Any, top_p: Any, *, greedy: bool, top_k: int) -> Any:
    """The next token from float32 ``logits [V]``: argmax, or a sample from the top-k (all
    when 0) candidates whose cumulative probability first reaches ``top_p``."""
    import jax
    import jax.numpy as jnp

    if greedy:
        return jnp.argmax(logits).astype(jnp.int32)
    scaled = logits / temperature
    if top_k > 0:
        vals, idx = jax.lax.top_k(scaled, top_k)
    else:
        idx = jnp.argsort(-scaled)
        vals = scaled[idx]
    probs = jax.nn.softmax(vals)
    before = jnp.cumsum(probs) - probs  # mass of the better candidates
    vals = jnp.where(before < top_p, vals, -jnp.inf)
    choice = jax.random.categorical(key, vals)
    return idx[choice].astype(jnp.int32)


def decode_chunk(
    params: Mapping[str, Any],
    adapter: Mapping[str, Any] | None,
    cache: Sequence[Mapping[str, Any]],
    token: Any,
    pos: Any,
    key: Any,
    temperature: Any,
    top_p: Any,
    remaining: Any,
    stop_ids: Any,
    *,
    steps: int,
    greedy: bool,
    top_k: int,
    arch: GemmaArch,
    lora_scale: float,
    dtype: Any,
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Up to ``steps`` decode steps in one device program: feed ``token`` at ``pos``, pick the
    next, feed it, ... until ``steps`` or ``remaining`` tokens were picked or one of
    ``stop_ids`` was. Returns (picked ``[steps]`` (the first ``n`` are valid; a stop token, if
    picked, is the last of them), ``n``, cache). One dispatch and one transfer per chunk
    instead of per token: on a GPU the per-token host round trip is most of a small model's
    decode time."""
    import jax
    import jax.numpy as jnp

    out0 = jnp.zeros((steps,), jnp.int32)

    def cond(state: Any) -> Any:
        i, _tok, _cache, _out, done = state
        return (i < steps) & (i < remaining) & ~done

    def body(state: Any) -> Any:
        i, tok, cache, out, _done = state
        logits, cache = extend(
            params,
            adapter,
            cache,
            tok.reshape(1, 1),
            pos + i,
            0,
            arch=arch,
            lora_scale=lora_scale,
            dtype=dtype,
        )
        nxt = pick(
            logits, jax.random.fold_in(key, i), temperature, top_p, greedy=greedy, top_k=top_k
        )
        out = out.at[i].set(nxt)
        return i + 1, nxt, cache, out, jnp.any(nxt == stop_ids)

    state = (jnp.int32(0), jnp.asarray(token, jnp.int32), list(cache), out0, jnp.bool_(False))
    n, _tok, new_cache, out, _done = jax.lax.while_loop(cond, body, state)
    return out, n, new_cache
