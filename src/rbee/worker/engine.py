"""The ONNX Runtime session of one model, with a KV cache of ``slots`` sequences.

The cache of layer ``i`` is one buffer per keys/values shaped ``[slots, Hkv, C, D]`` (see
`rbee.models.graph` for the graph's inputs). Each step binds the rows it needs, by pointer, as
both ``past`` and ``present``, so GroupQueryAttention appends the new positions in place and
nothing is copied. A batched decode runs the contiguous range of rows from the lowest to the
highest slot asked for; rows in that range that were not asked for ride along writing only their
scratch position (their next free one, at most ``context_length``, hence ``C = context + 1``) and
keep their length, so decoding any subset of slots never disturbs the others.

A batch is not always cheapest in one run: ONNX Runtime's 4-bit matmuls have a fast path for a
single row, and on a 2-core machine one run of two rows took 15.9 ms against 6.6 ms for one row.
`Engine.calibrate` measures what a run of each size costs, and `decode` then splits a batch into
the runs of contiguous rows that cost least in all (`plan_runs`).

Memory: the cache is reserved for the full context (about 380 MB of address space per slot for
the default model) but only pages that hold tokens become resident, about 46 KB per token (half
that for the fp16 graph, whose cache is float16).

Devices: on the CPU the cache is anonymous memory bound by pointer; on ``cuda:N`` it is one
`onnxruntime.OrtValue` per buffer on that GPU, bound the same way, so the cache never leaves the
device and only token ids and logits cross the bus. CUDA graphs are not used: ORT replays a
captured graph only with the same shapes and the same bound addresses each run, and every step
here varies the rows, the new tokens and the cache rows bound.
"""

from __future__ import annotations

import math
import mmap
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from rbee.errors import InferenceError, ModelError
from rbee.models import default_precision
from rbee.models.graph import cache_capacity
from rbee.models.store import Manifest

__all__ = ["Engine", "check_provider", "plan_runs"]

F32 = np.float32
# The graphs' KV cache element types (fp16 graphs keep the cache in half precision).
_CACHE_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}
# Run sizes `Engine.calibrate` measures; the fast single-row path matters only for small runs.
CALIBRATED_ROWS = 8


def _providers(device: str) -> tuple[list[str | tuple[str, dict[str, str]]], str, int]:
    if device == "cpu":
        return ["CPUExecutionProvider"], "cpu", 0
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ModelError(f"unknown device {device!r}: use 'cpu' or 'cuda:N'")
    device_id = int(index or 0)
    return (
        [("CUDAExecutionProvider", {"device_id": str(device_id)}), "CPUExecutionProvider"],
        "cuda",
        device_id,
    )


def check_provider(device: str, providers: Sequence[str]) -> str:
    """The execution provider a session for ``device`` got (``providers``, by priority), or a
    `ModelError` when a GPU was asked for and the session runs on something else.

    ONNX Runtime falls back to the CPU silently when the CUDA provider cannot start (no GPU, no
    driver, CUDA or cuDNN libraries missing): a worker that asked for a GPU must not serve from
    the CPU unnoticed.
    """
    got = providers[0] if providers else ""
    if device.startswith("cuda") and got != "CUDAExecutionProvider":
        raise ModelError(
            f"device {device} asked for, but ONNX Runtime started the model on {got or 'nothing'} "
            "(its CUDA provider failed to start: check the NVIDIA driver, CUDA 13 and cuDNN 9 "
            "libraries, and that the GPU exists); refusing to run on the CPU instead"
        )
    return got


def plan_runs(slots: Sequence[int], run_cost: Sequence[float]) -> list[list[int]]:
    """Split a step over ``slots`` into runs of contiguous rows that cost least in all.

    A run covers the rows from its lowest slot to its highest; a run of ``n`` rows costs
    ``run_cost[n - 1]``. Returns the runs, each its slots in ascending order.
    """
    ordered = sorted(slots)
    best = [0.0] + [math.inf] * len(ordered)
    start = [0] * (len(ordered) + 1)
    for end in range(1, len(ordered) + 1):
        for first in range(end):
            cost = best[first] + run_cost[ordered[end - 1] - ordered[first]]
            if cost < best[end]:
                best[end], start[end] = cost, first
    runs: list[list[int]] = []
    end = len(ordered)
    while end:
        runs.append(ordered[start[end] : end])
        end = start[end]
    return runs[::-1]


class Engine:
    """Runs prompts and batched single-token steps of one model on one device.

    Not thread-safe: one caller (the worker's batching loop) drives it. ``InferenceError`` for a
    request it cannot serve (context full, bad slot or token), ``ModelError`` when the graph
    cannot be loaded or the device is not available.
    """

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        *,
        precision: str | None = None,
        device: str = "cpu",
        threads: int = 0,
        slots: int = 4,
    ) -> None:
        if slots < 1:
            raise ModelError(f"slots must be at least 1, not {slots}")
        precision = precision or default_precision(device)
        path = model_dir / manifest.graph_file(precision)
        if not path.is_file():
            raise ModelError(f"model {manifest.name}: {path} is missing; import the model again")
        providers, self._device_type, self._device_id = _providers(device)
        if (
            self._device_type == "cuda"
            and "CUDAExecutionProvider" not in ort.get_available_providers()
        ):
            raise ModelError(self._no_cuda(device))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # ORT's pool threads spin between operators (that is most of its speed on small graphs)
        # and, by default, for a while after each run too: an idle worker would then keep every
        # core busy, slowing the queen, hive and HTTP handling that share the host.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            with warnings.catch_warnings():
                # A provider ORT cannot start is a warning there; `check_provider` refuses it.
                warnings.filterwarnings("ignore", "Specified provider", UserWarning)
                self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # ORT raises its own exception types for any load failure
            raise ModelError(f"cannot load {path}: {err}") from None
        self.provider: str = check_provider(device, self._session.get_providers())
        self.device = device
        self.precision = precision
        self.context_length = manifest.context_length
        self.vocab_size = manifest.vocab_size
        self.slots = slots
        self._layers = sum(1 for i in self._session.get_inputs() if i.name.startswith("past_key."))
        past = next(i for i in self._session.get_inputs() if i.name == "past_key.0")
        shape = past.shape
        self._kv_heads, self._head_dim = int(shape[1]), int(shape[3])
        self._cache_type = _CACHE_TYPES[past.type]
        self._capacity = cache_capacity(self.context_length)
        self._row_elems = self._kv_heads * self._capacity * self._head_dim
        self._cache = self._allocate_cache()
        self._lengths = [0] * slots
        self._logits = np.zeros((slots, self.vocab_size), F32)
        self._binding = self._session.io_binding()
        self._bound_rows: tuple[int, int] | None = None
        # Until `calibrate`, every size of run costs the same: a batch is one run.
        self.run_cost: list[float] = [1.0] * slots

    @staticmethod
    def _no_cuda(device: str) -> str:
        return (
            f"device {device} asked for, but CUDA is not available to ONNX Runtime here "
            f"(providers: {', '.join(ort.get_available_providers())}); use the CUDA build "
            "of rbee on a host with an NVIDIA GPU and its driver, or device cpu"
        )

    def _allocate_cache(self) -> list[tuple[int, object]]:
        """One (pointer, owner) per layer and keys/values; pages are touched only as they fill."""
        shape = (self.slots, self._kv_heads, self._capacity, self._head_dim)
        buffers: list[tuple[int, object]] = []
        for _ in range(2 * self._layers):
            if self._device_type == "cpu":
                # Anonymous memory without huge pages: a sequence touches 4 KiB pages as it
                # grows (numpy would ask for 2 MiB pages, making every slot fully resident).
                memory = mmap.mmap(-1, int(np.prod(shape)) * self._cache_type.itemsize)
                if hasattr(mmap, "MADV_NOHUGEPAGE"):
                    memory.madvise(mmap.MADV_NOHUGEPAGE)
                array = np.frombuffer(memory, self._cache_type).reshape(shape)
                buffers.append((int(array.ctypes.data), (memory, array)))
            else:
                value = ort.OrtValue.ortvalue_from_shape_and_type(
                    list(shape), self._cache_type, "cuda", self._device_id
                )
                buffers.append((int(value.data_ptr()), value))
        return buffers

    def calibrate(self, repeats: int = 3) -> list[float]:
        """Measure a decode run of each size, 1 to ``slots`` rows, in seconds (the fastest of
        ``repeats``), and plan later batches by it. Slots keep what they hold.

        Sizes past `CALIBRATED_ROWS` are not run (that would make a many-slot worker slow to
        start): they are taken to cost what the largest measured run did, so that such spans run
        in one piece, as they would without calibration.
        """
        costs: list[float] = []
        for rows in range(1, min(self.slots, CALIBRATED_ROWS) + 1):
            ids = np.zeros((rows, 1), np.int64)
            seqlens = np.array(self._lengths[:rows], np.int32)
            samples = []
            for _ in range(repeats + 1):
                self._bound_rows = None  # a split batch binds its rows again for every run
                start = time.perf_counter()
                self._run(0, ids, seqlens, 1)
                samples.append(time.perf_counter() - start)
            costs.append(min(samples[1:]))
        costs += [costs[-1]] * (self.slots - len(costs))
        self.run_cost = costs
        return costs

    def length(self, slot: int) -> int:
        """Tokens currently cached for ``slot``."""
        return self._lengths[self._check_slot(slot)]

    def release(self, slot: int) -> None:
        """``slot``'s sequence ended. Its cache keeps what it holds for a later `extend` to build on
        (a prompt that starts the same way); a `prefill` starts the slot afresh."""
        self._check_slot(slot)

    def prefill(self, slot: int, token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Reset ``slot``, run the prompt, return the float32 logits ``[vocab]`` of its last position."""
        last: npt.NDArray[np.float32] = self._prompt(slot, token_ids, 1, start=0)[0]
        return last

    def extend(
        self, slot: int, token_ids: Sequence[int], start: int | None = None
    ) -> npt.NDArray[np.float32]:
        """Like `prefill`, but after the first ``start`` positions ``slot`` holds (default: all).

        A long prompt runs in pieces this way, and a prompt that begins with tokens the slot
        ran before runs only the rest.
        """
        held = self._lengths[self._check_slot(slot)]
        if start is None:
            start = held
        if not 0 <= start <= held:
            raise InferenceError(f"slot {slot} holds {held} positions, not {start}")
        last: npt.NDArray[np.float32] = self._prompt(slot, token_ids, 1, start=start)[0]
        return last

    def score(self, slot: int, token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Like `prefill`, but the logits of every position ``[len(token_ids), vocab]``."""
        return self._prompt(slot, token_ids, len(token_ids), start=0)

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Feed one token to each of ``slots`` in one batched run; logits ``[len(slots), vocab]``."""
        if len(slots) != len(token_ids) or not slots:
            raise InferenceError(
                f"decode needs one token per slot (got {len(slots)} slots, {len(token_ids)} tokens)"
            )
        if len(set(slots)) != len(slots):
            raise InferenceError(f"decode got a slot twice: {list(slots)}")
        for slot in slots:
            self._check_room(self._check_slot(slot), 1)
        tokens = {slot: self._check_token(t) for slot, t in zip(slots, token_ids, strict=True)}
        where = {slot: i for i, slot in enumerate(slots)}
        out = np.empty((len(slots), self.vocab_size), F32)
        for run in plan_runs(slots, self.run_cost):
            lo, hi = run[0], run[-1]
            ids = np.zeros((hi - lo + 1, 1), np.int64)
            ids[[slot - lo for slot in run], 0] = [tokens[slot] for slot in run]
            # Idle rows write their next free position, which is scratch until they decode again.
            seqlens = np.array(self._lengths[lo : hi + 1], np.int32)
            logits = self._run(lo, ids, seqlens, 1)
            out[[where[slot] for slot in run]] = logits[[slot - lo for slot in run], 0]
        for slot in slots:
            self._lengths[slot] += 1
        return out

    def _prompt(
        self, slot: int, token_ids: Sequence[int], keep: int, *, start: int
    ) -> npt.NDArray[np.float32]:
        self._check_slot(slot)
        if not token_ids:
            raise InferenceError("the prompt is empty")
        self._lengths[slot] = start
        self._check_room(slot, len(token_ids))
        ids = np.array([[self._check_token(t) for t in token_ids]], np.int64)
        end = start + len(token_ids)
        logits = self._run(slot, ids, np.array([end - 1], np.int32), keep)
        self._lengths[slot] = end
        rows: npt.NDArray[np.float32] = logits[0].copy()
        return rows

    def _run(
        self, first: int, ids: npt.NDArray[np.int64], seqlens: npt.NDArray[np.int32], keep: int
    ) -> npt.NDArray[np.float32]:
        rows = ids.shape[0]
        binding = self._binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("seqlens_k", seqlens)
        binding.bind_cpu_input("total_sequence_length", np.array(int(seqlens.max()) + 1, np.int32))
        binding.bind_cpu_input("num_logits", np.array([keep], np.int64))
        if self._bound_rows != (first, rows):
            self._bind_cache(first, rows)
        if rows * keep <= self._logits.shape[0]:
            out = self._logits.reshape(-1)[: rows * keep * self.vocab_size].reshape(
                rows, keep, self.vocab_size
            )
        else:
            out = np.empty((rows, keep, self.vocab_size), F32)
        binding.bind_output("logits", "cpu", 0, F32, list(out.shape), int(out.ctypes.data))
        try:
            self._session.run_with_iobinding(binding)
        except Exception as err:  # ORT's runtime errors have no common public base class
            raise InferenceError(f"inference failed: {err}") from None
        return out

    def _bind_cache(self, first: int, rows: int) -> None:
        shape = [rows, self._kv_heads, self._capacity, self._head_dim]
        offset = first * self._row_elems * self._cache_type.itemsize
        for layer in range(self._layers):
            for j, kind in enumerate(("key", "value")):
                pointer = self._cache[2 * layer + j][0] + offset
                for name in (f"past_{kind}.{layer}", f"present_{kind}.{layer}"):
                    bind = self._binding.bind_input if name[1] == "a" else self._binding.bind_output
                    bind(name, self._device_type, self._device_id, self._cache_type, shape, pointer)
        self._bound_rows = (first, rows)

    def _check_slot(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise InferenceError(f"slot {slot} does not exist (this engine has {self.slots})")
        return slot

    def _check_token(self, token: int) -> int:
        if not 0 <= token < self.vocab_size:
            raise InferenceError(
                f"token id {token} is outside the vocabulary (0..{self.vocab_size - 1})"
            )
        return int(token)

    def _check_room(self, slot: int, new: int) -> None:
        if self._lengths[slot] + new > self.context_length:
            raise InferenceError(
                f"context length exceeded: slot {slot} holds {self._lengths[slot]} tokens and "
                f"{new} more would pass the model's limit of {self.context_length}"
            )
