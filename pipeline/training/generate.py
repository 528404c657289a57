"""Greedy decoding through the training forward, for checks during and after a run.

No KV cache: each new token reruns the forward over a fixed-length buffer (one compile per
buffer length; causal attention makes the unfilled tail irrelevant). That is plenty for a
sample reply of a few dozen tokens from a checkpoint; the chat stage has the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.models.config import GemmaArch
from pipeline.models.tokenizer import END_OF_TURN_ID, EOS_ID

STOP_IDS = (EOS_ID, END_OF_TURN_ID)


def greedy_ids(
    params: Mapping[str, Any],
    adapter: Mapping[str, Any] | None,
    prompt_ids: Sequence[int],
    *,
    arch: GemmaArch,
    lora_scale: float = 1.0,
    max_new_tokens: int = 32,
    stop_ids: Sequence[int] = STOP_IDS,
    dtype: str | None = None,
) -> list[int]:
    """The greedy continuation of ``prompt_ids`` (stop token excluded)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pipeline.models.gemma3_jax import hidden_states

    n = len(prompt_ids)
    length = -(-(n + max_new_tokens) // 32) * 32

    @jax.jit
    def next_token(params: Any, adapter: Any, ids: Any, last: Any) -> Any:
        seg = (jnp.arange(length) <= last).astype(jnp.int32)[None]
        h = hidden_states(
            params, adapter, ids, arch=arch, lora_scale=lora_scale, segment_ids=seg, dtype=dtype
        )
        row = jax.lax.dynamic_index_in_dim(h[0], last, keepdims=False)
        logits = row @ params["embed"].astype(row.dtype).T
        return jnp.argmax(logits)

    buf = np.zeros((1, length), np.int32)
    buf[0, :n] = prompt_ids
    out: list[int] = []
    for i in range(max_new_tokens):
        tok = int(next_token(params, adapter, jnp.asarray(buf), n - 1 + i))
        if tok in stop_ids:
            break
        out.append(tok)
        buf[0, n + i] = tok
    return out
