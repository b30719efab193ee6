"""Tiny GGUF files for the importer's error paths, and a plain numpy forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFWriter

from rbee.models.gguf_file import GgufModel, unpermute_rows

F32 = np.float32
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 64, 64, 2, 1, 32


def write_tiny_gguf(path: Path, *, arch: str = "llama", odd_tensor: str | None = None) -> Path:
    """A one-layer llama GGUF of float32 weights; ``odd_tensor`` is stored as IQ4_NL instead."""
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    rng = np.random.default_rng(0)
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {
        "token_embd.weight": (VOCAB, HIDDEN),
        "output_norm.weight": (HIDDEN,),
        "blk.0.attn_norm.weight": (HIDDEN,),
        "blk.0.ffn_norm.weight": (HIDDEN,),
        "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_k.weight": (kv, HIDDEN),
        "blk.0.attn_v.weight": (kv, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
        "blk.0.ffn_gate.weight": (FFN, HIDDEN),
        "blk.0.ffn_up.weight": (FFN, HIDDEN),
        "blk.0.ffn_down.weight": (HIDDEN, FFN),
    }
    for name, shape in shapes.items():
        if name == odd_tensor:
            rows, cols = shape
            raw = np.zeros((rows, cols // 32 * 18), np.uint8)  # IQ4_NL: 18 bytes per 32 values
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=GGMLQuantizationType.IQ4_NL)
        else:
            writer.add_tensor(name, rng.standard_normal(shape).astype(F32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _rms(x: npt.NDArray[F32], gamma: npt.NDArray[F32], eps: float) -> npt.NDArray[F32]:
    normed: npt.NDArray[F32] = (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma).astype(
        F32
    )
    return normed


def _rotate_half(
    x: npt.NDArray[F32], positions: npt.NDArray[np.int64], base: float
) -> npt.NDArray[F32]:
    dim = x.shape[-1]
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.outer(positions, inv)
    cos = np.concatenate([np.cos(angles)] * 2, -1).astype(F32)
    sin = np.concatenate([np.sin(angles)] * 2, -1).astype(F32)
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rotated * sin).astype(F32)


def numpy_forward(model: GgufModel, ids: list[int]) -> npt.NDArray[F32]:
    """Logits ``[len(ids), vocab]`` of a textbook llama forward pass over dequantized weights."""
    h = model.hyper
    w = model.floats
    n = len(ids)
    positions = np.arange(n)
    x = w("token_embd.weight")[ids]
    mask = np.triu(np.full((n, n), -np.inf, F32), 1)
    for i in range(h.layers):
        b = f"blk.{i}."
        y = _rms(x, w(b + "attn_norm.weight"), h.rms_eps)
        q = y @ w(b + "attn_q.weight")[unpermute_rows(h.heads * h.head_dim, h.heads)].T
        k = y @ w(b + "attn_k.weight")[unpermute_rows(h.kv_heads * h.head_dim, h.kv_heads)].T
        v = y @ w(b + "attn_v.weight").T
        q = _rotate_half(
            q.reshape(n, h.heads, h.head_dim).transpose(1, 0, 2), positions, h.rope_base
        )
        k = _rotate_half(
            k.reshape(n, h.kv_heads, h.head_dim).transpose(1, 0, 2), positions, h.rope_base
        )
        v = v.reshape(n, h.kv_heads, h.head_dim).transpose(1, 0, 2)
        group = h.heads // h.kv_heads
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(h.head_dim) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
        x = x + attended @ w(b + "attn_output.weight").T
        y = _rms(x, w(b + "ffn_norm.weight"), h.rms_eps)
        gate = y @ w(b + "ffn_gate.weight").T
        up = y @ w(b + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w(b + "ffn_down.weight").T
    x = _rms(x, w("output_norm.weight"), h.rms_eps)
    head = w("output.weight") if model.has("output.weight") else w("token_embd.weight")
    return (x @ head.T).astype(F32)
