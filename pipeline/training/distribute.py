"""Where a training run's arrays live: one device, data parallel over several, data x model
parallel, and several hosts.

The profile's ``train.devices`` ("auto": every visible device, or a count) and
``train.model_parallel`` (devices each frozen weight is split across) choose a
:class:`Placement`, built on ``keras.distribution``:

- ``model_parallel = 1``: :class:`keras.distribution.DataParallel` over a 1-D
  :class:`~keras.distribution.DeviceMesh` ``("batch",)``. Every device holds the whole frozen
  model and the LoRA state; each micro-batch's rows are split across the devices.
- ``model_parallel = M > 1``: :class:`keras.distribution.ModelParallel` over a
  ``("batch", "model")`` mesh of ``devices / M`` x ``M``, with a
  :class:`~keras.distribution.LayoutMap` that splits the large frozen kernels on the "model"
  axis (the vocabulary of the embedding, attention heads, the MLP's hidden units), for a model
  that does not fit one device.

The model is loaded inside :meth:`Placement.scope`, so keras-hub creates every weight with its
layout (a model-parallel weight is never whole on one device). The jitted step is the same
program as on one device: its inputs carry shardings (the batch split on its row axis, the
LoRA weights and optimizer state replicated) and XLA partitions it (GSPMD), adding the
all-reduce of the gradients. Because the loss is summed over every trained token of the global
batch before it is divided, N devices give the same loss and update as one device with the same
global batch (``train.batch_size`` is always the global micro-batch).

Several hosts: run the same command on every host with Keras' variables set
(:func:`initialize_multihost`): ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator's
``host:port``, process 0), ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
``KERAS_DISTRIBUTION_PROCESS_ID``. Each process reads the same data, builds the same global
batch and feeds its own devices their rows; each writes its own copy of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import TrainingError
from pipeline.models.gemma3_jax import KERAS_LAYER_PATHS

if TYPE_CHECKING:
    from pipeline.events import DeviceMemory
    from pipeline.profiles.schema import TrainConfig

AUTO = "auto"
BATCH_AXIS = "batch"
MODEL_AXIS = "model"

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"

_MODEL_SPLIT = {
    "q": 0,  # [heads, D, hd]: heads
    "k": 0,
    "v": 0,
    "o": 0,  # [heads, hd, D]: heads
    "gate": 1,  # [D, F]: hidden units
    "up": 1,
    "down": 0,  # [F, D]
}
"""Which axis of each decoder-block kernel is split on the "model" mesh axis (the Megatron
split: attention by heads, the MLP by its hidden units); the embedding splits its vocabulary.
A weight whose axis does not divide evenly (Gemma 3 1B has one key/value head) is replicated."""


def _keras() -> Any:
    """keras, on the JAX backend."""
    from pipeline.models.backend import ensure_jax_backend

    ensure_jax_backend()
    import keras

    return keras


def check_devices_setting(value: str) -> str | None:
    """The profile rule of ``train.devices``: "auto" or a whole number >= 1."""
    text = str(value).strip()
    if text == AUTO:
        return None
    if text.isdigit() and int(text) >= 1:
        return None
    return "not a device count"


# --------------------------------------------------------------------------- several hosts


def multihost_requested() -> bool:
    """Whether the Keras multi-process variables ask for more than one process."""
    try:
        return int(os.environ.get(ENV_PROCESSES, "1") or "1") > 1
    except ValueError:
        return True  # let initialize_multihost name the bad value


def initialize_multihost() -> int:
    """Join the cluster the Keras variables describe (``keras.distribution.initialize``, which
    calls ``jax.distributed.initialize``); a no-op without them. Must run before JAX touches a
    device. Returns the number of processes.

    Raises:
        TrainingError: a variable is missing or malformed, or JAX has started already.
    """
    if not multihost_requested():
        return 1
    import sys

    def bad(message: str) -> TrainingError:
        return TrainingError(
            message,
            hint=f"On every host set {ENV_ADDRESSES}=HOST:PORT (process 0's address), "
            f"{ENV_PROCESSES}=N and {ENV_PROCESS_ID}=0..N-1, then run the same command.",
        )

    raw_n, raw_id = os.environ.get(ENV_PROCESSES, ""), os.environ.get(ENV_PROCESS_ID)
    if not raw_n.strip().isdigit():
        raise bad(f"{ENV_PROCESSES}={raw_n!r} is not a whole number")
    n = int(raw_n)
    if raw_id is None or not raw_id.strip().isdigit() or not 0 <= int(raw_id) < n:
        raise bad(f"{ENV_PROCESS_ID}={raw_id!r}: expected a process number from 0 to {n - 1}")
    if not os.environ.get(ENV_ADDRESSES, "").strip():
        raise bad(f"{ENV_PROCESSES}={n} but {ENV_ADDRESSES} is not set")
    jax_mod = sys.modules.get("jax")
    if jax_mod is not None:
        try:
            if jax_mod.process_count() == n and jax_mod.distributed.is_initialized():
                return n  # joined already (a second run in this process)
        except Exception:
            pass
    keras = _keras()
    try:
        keras.distribution.initialize()
    except Exception as exc:
        raise bad(f"could not join the {n}-process cluster: {exc}") from exc
    return n


# --------------------------------------------------------------------------- the placement


def device_name(device: Any) -> str:
    """``gpu:0``, ``cpu:1``, ``tpu:3`` (the id is global across hosts)."""
    return f"{device.platform}:{device.id}"


@dataclass
class Placement:
    """The devices of a run and how its arrays are laid out on them (module docstring)."""

    devices: tuple[Any, ...]
    """The mesh's devices (every process's), in mesh order (row-major ``data x model``)."""
    data_parallel: int
    model_parallel: int
    distribution: Any
    """The ``keras.distribution`` DataParallel or ModelParallel."""
    left_idle: tuple[Any, ...] = ()
    """Visible devices "auto" could not use (the batch does not split across them all)."""

    @property
    def mesh(self) -> Any:
        """The ``jax.sharding.Mesh``."""
        return self.distribution.device_mesh.backend_mesh

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def local_devices(self) -> tuple[Any, ...]:
        """This process's devices of the mesh."""
        import jax

        me = jax.process_index()
        return tuple(d for d in self.devices if d.process_index == me)

    def sharding(self, *axes: str | None) -> Any:
        """The ``NamedSharding`` of a keras ``TensorLayout`` with these axes on the mesh."""
        keras = _keras()
        layout = keras.distribution.TensorLayout(axes, self.distribution.device_mesh)
        return layout.backend_layout

    @property
    def replicated(self) -> Any:
        import jax

        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    def batch_sharding(self, ndim: int, row_axis: int) -> Any:
        axes: list[str | None] = [None] * ndim
        axes[row_axis] = BATCH_AXIS
        return self.sharding(*axes)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Inside: keras creates variables with the placement's layouts (load the model here)."""
        with self.distribution.scope():
            yield

    # ---- putting arrays on the devices

    def frozen_sharding(self, keras_path: str, shape: Sequence[int]) -> Any:
        """The sharding of one frozen weight, by its keras variable path."""
        if self.model_parallel == 1:
            return self.replicated
        layout = _even(self.distribution.get_tensor_layout(keras_path), shape)
        return self.replicated if layout is None else layout.backend_layout

    def put_frozen(self, frozen: dict[str, Any]) -> dict[str, Any]:
        """The frozen-weight pytree (:func:`~pipeline.models.gemma3_jax.params_from_backbone`)
        with every leaf on its sharding (weights loaded in :meth:`scope` are there already:
        nothing is copied)."""
        import jax

        def put(x: Any, path: str) -> Any:
            return jax.device_put(x, self.frozen_sharding(path, x.shape))

        return {
            "embed": put(frozen["embed"], "token_embedding/embeddings"),
            "final_norm": put(frozen["final_norm"], "final_normalization/scale"),
            "layers": [
                {k: put(v, f"decoder_block_{i}/{KERAS_LAYER_PATHS[k]}") for k, v in layer.items()}
                for i, layer in enumerate(frozen["layers"])
            ],
        }

    def put_replicated(self, tree: Any) -> Any:
        """A pytree (LoRA weights, optimizer state; numpy or JAX) replicated on every device."""
        return self._put(tree, lambda _x: self.replicated)

    def put_batch(self, batch: dict[str, Any], row_axis: int = 1) -> dict[str, Any]:
        """A batch of numpy arrays (rows on ``row_axis``: 1 for the step's ``[A, B, S]``, 0 for
        an eval ``[B, S]``) split by rows across the data-parallel devices. Every process
        passes the same global batch; each places only its own devices' rows."""
        return self._put(batch, lambda x: self.batch_sharding(x.ndim, row_axis))

    def _put(self, tree: Any, sharding_of: Any) -> Any:
        import jax
        import numpy as np

        if jax.process_count() == 1:
            return jax.tree.map(lambda x: jax.device_put(x, sharding_of(x)), tree)

        def put(x: Any) -> Any:
            host = np.asarray(jax.device_get(x) if isinstance(x, jax.Array) else x)
            return jax.make_array_from_callback(host.shape, sharding_of(host), lambda i: host[i])

        return jax.tree.map(put, tree)

    # ---- reading results back

    @staticmethod
    def to_host(tree: Any) -> Any:
        """Numpy copies of a pytree of replicated (or fully addressable) arrays; on several
        hosts each process reads its own replica."""
        import jax
        import numpy as np

        def get(x: Any) -> Any:
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return np.asarray(x.addressable_data(0))
            return np.asarray(jax.device_get(x))

        return jax.tree.map(get, tree)

    # ---- words

    def describe(self, batch_size: int | None = None) -> str:
        """``data parallel over 2 GPUs (gpu:0, gpu:1); 4 sequences per device per
        micro-batch``, or ``one device (cpu:0)``."""
        kind = _kind_name(self.devices)
        names = ", ".join(device_name(d) for d in self.devices[:8])
        if self.size > 8:
            names += f", ... ({self.size} in all)"
        if self.size == 1:
            text = f"one device ({names})"
        elif self.model_parallel == 1:
            text = f"data parallel over {self.size} {kind}s ({names})"
        else:
            text = (
                f"{self.data_parallel} data-parallel x {self.model_parallel} model-parallel "
                f"{kind}s ({names})"
            )
        if batch_size is not None and self.data_parallel > 1:
            text += f"; {batch_size // self.data_parallel} sequences per replica per micro-batch"
        import jax

        if jax.process_count() > 1:
            text += f"; {jax.process_count()} processes, this is process {jax.process_index()}"
        if self.left_idle:
            idle = ", ".join(device_name(d) for d in self.left_idle)
            text += f"; left idle: {idle}"
        return text


def _kind_name(devices: Sequence[Any]) -> str:
    platforms = {d.platform for d in devices}
    if platforms == {"gpu"}:
        return "GPU"
    if platforms == {"tpu"}:
        return "TPU"
    if platforms == {"cpu"}:
        return "CPU device"
    return "device"


def resolve_device_count(
    setting: str, model_parallel: int, batch_size: int, visible: int, *, processes: int = 1
) -> int:
    """How many devices a run uses (see :func:`plan_placement`). Pure, for tests and the TUI.

    Raises:
        TrainingError: the setting asks for more devices than visible, or the batch or the
            model split does not divide.
    """
    text = str(setting).strip()
    if check_devices_setting(text) is not None:
        raise TrainingError(
            f'train.devices = {setting!r}: expected "auto" or a device count',
            hint='Set train.devices = "auto" (every visible device) or a count such as 2.',
        )
    if model_parallel > visible:
        raise TrainingError(
            f"train.model_parallel = {model_parallel} needs {model_parallel} devices; "
            f"{visible} {'is' if visible == 1 else 'are'} visible",
            hint="Lower train.model_parallel, or check CUDA_VISIBLE_DEVICES.",
        )
    if text == AUTO:
        for count in range(visible, 0, -1):
            if count % model_parallel == 0 and batch_size % (count // model_parallel) == 0:
                if processes > 1 and count != visible:
                    break  # every process must take part
                return count
        raise TrainingError(
            f"train.batch_size = {batch_size} does not split across the {visible} devices of "
            f"the {processes} processes (each data-parallel replica takes an equal share)",
            hint=f"Make train.batch_size a multiple of {visible // model_parallel}.",
        )
    count = int(text)
    if count > visible:
        raise TrainingError(
            f"train.devices = {count}, but only {visible} "
            f"{'device is' if visible == 1 else 'devices are'} visible",
            hint=f'Set train.devices = "auto" or at most {visible}, or check CUDA_VISIBLE_DEVICES.',
        )
    if count % model_parallel:
        raise TrainingError(
            f"train.devices = {count} is not a multiple of train.model_parallel = {model_parallel}",
            hint="Each model-parallel group takes train.model_parallel devices.",
        )
    replicas = count // model_parallel
    if batch_size % replicas:
        raise TrainingError(
            f"train.batch_size = {batch_size} does not split across {replicas} data-parallel "
            "replicas (each takes an equal share of the rows)",
            hint=f"Make train.batch_size a multiple of {replicas} (raise "
            "train.gradient_accumulation_steps to keep the effective batch), or change "
            "train.devices.",
        )
    if processes > 1 and count != visible:
        raise TrainingError(
            f"train.devices = {count} on {processes} processes with {visible} devices in all: "
            "on several hosts every device takes part",
            hint='Set train.devices = "auto".',
        )
    return count


def plan_placement(train: TrainConfig, *, devices: Sequence[Any] | None = None) -> Placement:
    """The :class:`Placement` for the profile's ``train.devices`` and
    ``train.model_parallel`` over ``devices`` (default ``jax.devices()``: every process's)."""
    import jax
    import numpy as np

    keras = _keras()
    visible = list(jax.devices() if devices is None else devices)
    mp = train.model_parallel
    count = resolve_device_count(
        train.devices, mp, train.batch_size, len(visible), processes=jax.process_count()
    )
    used = visible[:count]
    idle = tuple(visible[count:]) if str(train.devices).strip() == AUTO else ()
    data = count // mp
    dist = keras.distribution
    if mp == 1:
        mesh = dist.DeviceMesh(shape=(count,), axis_names=[BATCH_AXIS], devices=used)
        distribution = dist.DataParallel(device_mesh=mesh)
    else:
        mesh = dist.DeviceMesh(
            shape=(data, mp),
            axis_names=[BATCH_AXIS, MODEL_AXIS],
            devices=np.array(used, dtype=object).reshape(data, mp),
        )
        distribution = _even_model_parallel()(
            layout_map=model_layout_map(mesh), batch_dim_name=BATCH_AXIS
        )
    return Placement(tuple(used), data, mp, distribution, idle)


def _even(layout: Any, shape: Sequence[int]) -> Any:
    """``layout``, or None (replicate) where a split axis does not divide ``shape`` evenly."""
    if layout is None:
        return None
    mesh = layout.device_mesh
    for size, axis in zip(shape, layout.axes, strict=False):
        if axis is not None and size % mesh.shape[mesh.axis_names.index(axis)]:
            return None
    return layout


_EVEN_MP: Any = None


def _even_model_parallel() -> Any:
    """``keras.distribution.ModelParallel`` that replicates a weight whose split axis does not
    divide evenly (Gemma 3 1B's single key/value head) instead of failing to create it."""
    global _EVEN_MP
    if _EVEN_MP is None:
        keras = _keras()

        class EvenModelParallel(keras.distribution.ModelParallel):
            def get_variable_layout(self, variable: Any) -> Any:
                if getattr(variable, "_layout", None) is not None:
                    return variable._layout
                layout = _even(self._layout_map[variable.path], variable.shape)
                if layout is None:
                    return keras.distribution.TensorLayout(
                        [None] * len(variable.shape), self.device_mesh
                    )
                return layout

        _EVEN_MP = EvenModelParallel
    return _EVEN_MP


def model_layout_map(mesh: Any) -> Any:
    """The ``keras.distribution.LayoutMap`` of a model-parallel run: keras variable paths of
    the Gemma 3 backbone -> layouts on the "model" axis (:data:`_MODEL_SPLIT`; the embedding
    by vocabulary). Norm scales are not listed: they are replicated."""
    keras = _keras()
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["token_embedding/embeddings"] = (MODEL_AXIS, None)
    for key, axis in _MODEL_SPLIT.items():
        axes: list[str | None] = [None] * (3 if key in ("q", "k", "v", "o") else 2)
        axes[axis] = MODEL_AXIS
        layout_map[r"decoder_block_\d+/" + KERAS_LAYER_PATHS[key]] = tuple(axes)
    return layout_map


def device_memory(placement_devices: Sequence[Any]) -> tuple[DeviceMemory, ...]:
    """Memory of each of this process's devices (JAX's own counters, and NVML's view of each
    GPU card)."""
    from pipeline.events import DeviceMemory
    from pipeline.utils.gpu import jax_memory, nvml_index, nvml_memory

    out = []
    for dev in placement_devices:
        stats = jax_memory(dev)
        card = None
        if dev.platform == "gpu":
            index = nvml_index(dev)
            card = nvml_memory(index) if index is not None else None
        out.append(
            DeviceMemory(
                device=device_name(dev),
                bytes_in_use=stats.get("bytes_in_use"),
                peak_bytes=stats.get("peak_bytes_in_use"),
                bytes_limit=stats.get("bytes_limit"),
                gpu_used_bytes=card[0] if card else None,
                gpu_total_bytes=card[1] if card else None,
            )
        )
    return tuple(out)
