"""Memory readings for the Train screen and metrics.jsonl.

JAX preallocates 75% of the card, so NVML's "used" shows the pool, not what the run needs:
report JAX's own ``bytes_in_use`` / ``peak_bytes_in_use`` for this process beside NVML's
used/total for the whole card, and the host RSS (the only reading on a CPU).
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_MEM_FRACTION = "0.92"
"""JAX's share of the card when the user has not chosen one. JAX's own default (0.75) leaves
a 12 GB card 9 GB, less than the rtx3060-12gb profile needs (9.7 GiB measured under a 12 GiB
cap); 0.92 leaves about 1 GB for the CUDA context and a display."""


def configure_jax_memory() -> str | None:
    """Before JAX starts: set ``XLA_PYTHON_CLIENT_MEM_FRACTION`` to
    :data:`DEFAULT_MEM_FRACTION` unless the user set it (or preallocation is off). Returns the
    fraction now in force, or None when JAX was already initialised (too late to change)."""
    import sys

    if "jax" in sys.modules and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        return None
    if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() in ("false", "0"):
        return os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    return os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_MEM_FRACTION)


def host_rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc``), None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def jax_memory(device: Any = None) -> dict[str, int]:
    """``memory_stats()`` of a JAX device (empty on backends that do not report it)."""
    import jax

    dev = device or jax.local_devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:
        stats = {}
    return {k: int(v) for k, v in stats.items() if isinstance(v, int | float)}


def nvml_memory(index: int = 0) -> tuple[int, int] | None:
    """(used, total) bytes of GPU ``index`` from NVML, or None without pynvml or a GPU."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.used), int(info.total)
    except Exception:
        return None


def nvml_index(device: Any) -> int | None:
    """NVML's index of a local JAX GPU device: CUDA numbers the visible cards from 0, NVML
    numbers every card, so a ``CUDA_VISIBLE_DEVICES`` list of numbers maps one to the other
    (None for a list of UUIDs: the card is then not matched)."""
    local = getattr(device, "local_hardware_id", None)
    if local is None:
        local = getattr(device, "id", 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return int(local)
    items = [v.strip() for v in visible.split(",") if v.strip()]
    if not all(v.isdigit() for v in items) or local >= len(items):
        return None
    return int(items[local])
