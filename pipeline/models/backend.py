"""Keras backend selection. keras reads ``KERAS_BACKEND`` once, at its first import, and its
default (TensorFlow) is not installed here, so every path to keras goes through
:func:`ensure_jax_backend` first."""

from __future__ import annotations

import os
import sys

from pipeline.errors import ModelSourceError


def ensure_jax_backend() -> None:
    """Select the JAX backend for keras, or fail clearly if keras already runs another one."""
    wanted = os.environ.setdefault("KERAS_BACKEND", "jax")
    if wanted != "jax":
        raise ModelSourceError(
            f"KERAS_BACKEND is {wanted!r}; gemma-tui trains and runs Gemma 3 on JAX",
            hint="Unset KERAS_BACKEND or set it to jax.",
        )
    if "keras" in sys.modules:
        import keras

        backend = keras.config.backend()
        if backend != "jax":
            raise ModelSourceError(
                f"keras was imported with the {backend!r} backend before gemma-tui chose JAX",
                hint="Set KERAS_BACKEND=jax before starting Python.",
            )
