"""AdamW with linear warmup then cosine, linear or constant decay, in plain JAX.

The state is two float32 moments per LoRA array and a step counter: a small pytree that the
checkpoint writes as ``optimizer.npz`` and a resumed run reads back exactly. Weight decay is
decoupled (``p -= lr * wd * p``), as in ``keras.optimizers.AdamW`` and PyTorch's AdamW.
Gradients are clipped by their global norm before the update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class Schedule:
    """Learning rate per optimizer step: linear warmup from 0 to ``peak`` over ``warmup``
    steps, then ``kind`` decay to 0 at ``total`` (cosine, linear) or flat (constant)."""

    peak: float
    warmup: int
    total: int
    kind: str = "cosine"

    def __call__(self, step: Any) -> Any:
        """The rate of the update made at optimizer step ``step`` (counted from 0): warmup
        steps 0..w-1 ramp to ``peak`` ((step + 1) / w), then the decay runs from ``peak`` at
        step w towards 0 at step ``total``."""
        import jax.numpy as jnp

        s = jnp.asarray(step, jnp.float32)
        warm = self.peak * (s + 1.0) / max(self.warmup, 1)
        span = max(self.total - self.warmup, 1)
        frac = jnp.clip((s - self.warmup) / span, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = self.peak * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        elif self.kind == "linear":
            decayed = self.peak * (1.0 - frac)
        else:
            decayed = jnp.asarray(self.peak, jnp.float32)
        return jnp.where(s < self.warmup, warm, decayed)

    def value(self, step: int) -> float:
        """The same as a Python float (for logs)."""
        return float(self(step))


def init_state(params: Any) -> dict[str, Any]:
    """Zero moments shaped like ``params`` and a step count of 0."""
    import jax
    import jax.numpy as jnp

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return {
        "mu": zeros,
        "nu": jax.tree.map(jnp.zeros_like, zeros),
        "count": jnp.zeros((), jnp.int32),
    }


def global_norm(tree: Any) -> jax.Array:
    import jax
    import jax.numpy as jnp

    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def apply(
    params: Any,
    grads: Any,
    state: dict[str, Any],
    *,
    schedule: Schedule,
    weight_decay: float,
    max_grad_norm: float,
) -> tuple[Any, dict[str, Any], dict[str, jax.Array]]:
    """One AdamW update. Returns new params, new state and ``{"grad_norm", "lr"}``.

    A non-finite gradient norm leaves params and state unchanged (the caller stops the run
    and reports it)."""
    import jax
    import jax.numpy as jnp

    norm = global_norm(grads)
    if max_grad_norm > 0:
        factor = jnp.minimum(1.0, max_grad_norm / (norm + 1e-6))
        grads = jax.tree.map(lambda g: g * factor, grads)
    count = state["count"]
    lr = schedule(count)
    t = (count + 1).astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: BETA1 * m + (1 - BETA1) * g, state["mu"], grads)
    nu = jax.tree.map(lambda v, g: BETA2 * v + (1 - BETA2) * jnp.square(g), state["nu"], grads)
    c1, c2 = 1 - BETA1**t, 1 - BETA2**t

    def update(p: Any, m: Any, v: Any) -> Any:
        step = (m / c1) / (jnp.sqrt(v / c2) + EPS) + weight_decay * p
        return (p - lr * step).astype(p.dtype)

    new_params = jax.tree.map(update, params, mu, nu)
    ok = jnp.isfinite(norm)
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    new_params = jax.tree.map(keep, new_params, params)
    new_state = {
        "mu": jax.tree.map(keep, mu, state["mu"]),
        "nu": jax.tree.map(keep, nu, state["nu"]),
        "count": jnp.where(ok, count + 1, count),
    }
    return new_params, new_state, {"grad_norm": norm, "lr": lr}
