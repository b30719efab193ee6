"""How much GPU memory a worker for a model needs: the one estimate placement and workers share.

The need is the sum of three parts:

- weights: the on-disk size of the precision's graph and its external data (4- and 8-bit weights
  stay packed on the device, so the files are what the GPU holds);
- KV cache: ``layers x kv_heads x head_dim x 2 (keys, values) x bytes per element x slots x
  capacity``, read from the graph's ``past_key.<i>`` inputs (their element type gives the bytes:
  4 for float32, 2 for float16), with the capacity of `rbee.models.graph.cache_capacity` for the
  context, since the engine reserves the whole context for every slot;
- a runtime margin: `RUNTIME_OVERHEAD_MB` for the CUDA context, cuBLAS/cuDNN workspaces and ONNX
  Runtime's arena, plus `ACTIVATION_FRACTION` of the weights for activations and logits. It is a
  margin, not a measurement: ``bench/cuda_check.sh`` prints what a worker really uses.

The hive reports the estimate of every model in its store (`rbee.wire.hive.ModelInfo`, and in its
heartbeat for the queen's policies); the hive and the worker refuse a GPU without room for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rbee.errors import ModelError
from rbee.models.store import Manifest

__all__ = [
    "ACTIVATION_FRACTION",
    "RUNTIME_OVERHEAD_MB",
    "VramNeed",
    "ensure_room",
    "gpu_precision",
    "model_vram_required",
    "no_room_message",
]

MB = 1024 * 1024
RUNTIME_OVERHEAD_MB = 512.0
ACTIVATION_FRACTION = 0.10

# ONNX TensorProto element types of a KV cache, and their sizes in bytes.
_ELEMENT_BYTES = {1: 4, 10: 2, 16: 2}


@dataclasses.dataclass(frozen=True)
class VramNeed:
    """The estimate for one worker: its parts in MB and what they were computed for."""

    model: str
    precision: str
    slots: int
    context_length: int
    weights_mb: float
    kv_cache_mb: float
    overhead_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_cache_mb + self.overhead_mb

    def describe(self) -> str:
        """``2100 MB (weights 114 MB + KV cache 1510 MB for 4 slots x 8192 tokens + ...)``."""
        return (
            f"{self.total_mb:.0f} MB (weights {self.weights_mb:.0f} MB + KV cache "
            f"{self.kv_cache_mb:.0f} MB for {self.slots} slots x {self.context_length} tokens + "
            f"runtime margin {self.overhead_mb:.0f} MB)"
        )


def gpu_precision(manifest: Manifest, configured: str) -> str:
    """The precision a GPU worker of this model loads: the configured one when the model has it;
    else ``fp16`` (ONNX Runtime's CUDA attention takes half precision only) when it has that;
    else the first it lists. An empty ``configured`` means the worker's default."""
    for precision in (configured, "fp16"):
        if precision and precision in manifest.precisions:
            return precision
    return manifest.precisions[0] if manifest.precisions else configured


def _cache_shape(graph: Path) -> tuple[int, int, int, int]:
    """``(layers, kv_heads, head_dim, bytes per element)`` from the graph's cache inputs."""
    import onnx

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError and others for a broken file
        raise ModelError(f"cannot read the graph {graph}: {err}") from None
    caches = [i for i in model.graph.input if i.name.startswith("past_key.")]
    if not caches:
        raise ModelError(f"the graph {graph} has no KV cache inputs (past_key.<i>)")
    tensor = caches[0].type.tensor_type
    dims = [d.dim_value for d in tensor.shape.dim]
    if len(dims) != 4 or dims[1] <= 0 or dims[3] <= 0 or tensor.elem_type not in _ELEMENT_BYTES:
        raise ModelError(f"the graph {graph} has a KV cache input of an unknown shape or type")
    return len(caches), dims[1], dims[3], _ELEMENT_BYTES[tensor.elem_type]


def model_vram_required(
    directory: Path,
    manifest: Manifest,
    *,
    precision: str,
    slots: int,
    context_length: int | None = None,
) -> VramNeed:
    """The estimated VRAM of a worker for the model in ``directory`` (see the module docstring).

    ``context_length`` defaults to the model's own. `ModelError` when the precision is missing
    or its graph cannot be read.
    """
    from rbee.models.graph import cache_capacity

    graph = manifest.graph_file(precision)
    weights = sum(entry.size for name, entry in manifest.files.items() if name.startswith(graph))
    context = context_length or manifest.context_length
    layers, kv_heads, head_dim, element = _cache_shape(directory / graph)
    kv_bytes = layers * kv_heads * head_dim * 2 * element * slots * cache_capacity(context)
    weights_mb = weights / MB
    return VramNeed(
        model=manifest.name,
        precision=precision,
        slots=slots,
        context_length=context,
        weights_mb=weights_mb,
        kv_cache_mb=kv_bytes / MB,
        overhead_mb=RUNTIME_OVERHEAD_MB + ACTIVATION_FRACTION * weights_mb,
    )


def ensure_room(
    directory: Path, manifest: Manifest, *, device: str, precision: str, slots: int
) -> None:
    """Refuse (`ModelError`) to load the model on GPU ``device`` when NVML shows too little free.

    A CPU device, or a host where NVML does not know the GPU, passes: the worker's provider check
    is what catches a GPU that is not there.
    """
    if not device.startswith("cuda:"):
        return
    from rbee.hive.telemetry import Gpus

    gpus = Gpus()
    try:
        index = int(device.partition(":")[2])
        gpu = next((g for g in gpus.telemetry() if g.index == index), None)
    finally:
        gpus.close()
    if gpu is None:
        return
    need = model_vram_required(directory, manifest, precision=precision, slots=slots)
    free = gpu.vram_total_mb - gpu.vram_used_mb
    if need.total_mb > free:
        raise ModelError(no_room_message(need, device, free))


def no_room_message(need: VramNeed, device: str, free_mb: float) -> str:
    """Why a worker may not start on ``device``, and what to do instead."""
    return (
        f"not enough free VRAM on {device} for model {need.model}: it needs about "
        f"{need.describe()}, and {device} has {free_mb:.0f} MB free; use fewer slots, another "
        "GPU or the CPU"
    )
