"""Tiny GGUF files for the importer's error paths and for every architecture, and a plain numpy
forward pass to check the converted graphs against."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants

from rbee.models.gguf_file import GgufModel, unpermute_rows

F32 = np.float32
Q = GGMLQuantizationType
HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 64, 64, 2, 1, 32

# Byte ranges of each block type's f16 fields (scales, minimums) within a block.
F16_FIELDS = {
    Q.Q4_0: (0, 2),
    Q.Q4_1: (0, 4),
    Q.Q5_0: (0, 2),
    Q.Q5_1: (0, 4),
    Q.Q8_0: (0, 2),
    Q.Q2_K: (80, 84),
    Q.Q3_K: (108, 110),
    Q.Q4_K: (0, 4),
    Q.Q5_K: (0, 4),
    Q.Q6_K: (208, 210),
}


def random_blocks(
    kind: Q, rows: int, cols: int, rng: np.random.Generator, std: float | None = None
) -> npt.NDArray[np.uint8]:
    """A ``[rows, bytes]`` matrix of random ``kind`` blocks with finite f16 fields.

    With ``std``, the f16 fields are scaled so that the values have about that spread (values
    are linear in them), as a model's weights would.
    """
    values, size = GGML_QUANT_SIZES[kind]
    raw = rng.integers(0, 256, (rows, cols // values, size), dtype=np.uint8)
    start, end = F16_FIELDS[kind]
    normal = rng.standard_normal((rows, cols // values, (end - start) // 2))
    raw[..., start:end] = (normal * 0.01).astype(np.float16).view(np.uint8)
    if std is not None:
        spread = float(quants.dequantize(raw.reshape(rows, -1), kind).std())
        raw[..., start:end] = (normal * 0.01 * std / spread).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


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


def byte_level_tokens() -> list[str]:
    """The 256 byte-level BPE symbols (GPT-2's byte-to-unicode map), in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """The shape of a small random-weight decoder of one architecture."""

    arch: str
    layers: int = 2
    hidden: int = 256
    ffn: int = 512
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    context: int = 64
    sliding_window: int = 0
    tied: bool = True
    quantized: bool = False
    """Matrices in a mix of every block type (K-quants where a row is whole super-blocks)."""
    name: str = ""
    chat_template: str = ""
    rope_factors: bool = False
    """LongRoPE's ``rope_factors_long``/``_short`` tensors (phi3 files with a long context)."""
    table: Q | None = None
    """The block type of the token table and an untied output projection, whatever
    ``quantized`` says of the other matrices."""

    @property
    def vocab(self) -> int:
        return 256 + len(_MERGES) + 1


# A few byte-level merges (llama.cpp refuses a BPE vocabulary without any).
_MERGES = ["Ġ t", "h e", "i n", "Ġ a"]

# Which block type each matrix gets in a quantized synthetic model: every type appears.
_MATRIX_TYPES = {
    "token_embd": Q.Q6_K,
    "output": Q.Q2_K,
    "attn_qkv": Q.Q4_K,
    "attn_q": Q.Q5_0,
    "attn_k": Q.Q8_0,
    "attn_v": Q.Q4_K,
    "attn_output": Q.Q3_K,
    "ffn_gate": Q.Q5_K,
    "ffn_up": Q.Q4_1,
    "ffn_down": Q.Q6_K,
}
_LAYER_TYPES = [Q.Q4_0, Q.Q5_1]  # ffn_up of odd layers, attn_output of even ones where K is odd


def write_synthetic_gguf(path: Path, spec: Synthetic, seed: int = 0) -> Path:
    """A GGUF of ``spec``'s architecture with random weights and a byte-level vocabulary."""
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), spec.arch)
    writer.add_block_count(spec.layers)
    writer.add_context_length(spec.context)
    writer.add_embedding_length(spec.hidden)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0 if spec.arch != "gemma3" else 1e6)
    if spec.sliding_window:
        writer.add_sliding_window(spec.sliding_window)
    merged = [m.replace(" ", "") for m in _MERGES]
    tokens = [*byte_level_tokens(), *merged, "<|endoftext|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(_MERGES)
    writer.add_eos_token_id(len(tokens) - 1)
    if spec.name:
        writer.add_name(spec.name)
    if spec.chat_template:
        writer.add_chat_template(spec.chat_template)
    q_rows, kv_rows = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    norms = ["attn_norm", "ffn_norm"]
    if spec.arch == "gemma3":
        norms += ["post_attention_norm", "post_ffw_norm"]
    tensors: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (spec.vocab, spec.hidden),
        "output_norm.weight": (spec.hidden,),
    }
    if not spec.tied:
        tensors["output.weight"] = (spec.vocab, spec.hidden)
    if spec.rope_factors:
        tensors |= {
            f"rope_factors_{kind}.weight": (spec.head_dim // 2,) for kind in ("long", "short")
        }
    for i in range(spec.layers):
        b = f"blk.{i}."
        tensors |= {b + f"{n}.weight": (spec.hidden,) for n in norms}
        if spec.arch == "phi3":
            matrices = {
                "attn_qkv": (q_rows + 2 * kv_rows, spec.hidden),
                "attn_output": (spec.hidden, q_rows),
                "ffn_up": (2 * spec.ffn, spec.hidden),
            }
        else:
            matrices = {
                "attn_q": (q_rows, spec.hidden),
                "attn_k": (kv_rows, spec.hidden),
                "attn_v": (kv_rows, spec.hidden),
                "attn_output": (spec.hidden, q_rows),
                "ffn_gate": (spec.ffn, spec.hidden),
                "ffn_up": (spec.ffn, spec.hidden),
            }
        matrices["ffn_down"] = (spec.hidden, spec.ffn)
        tensors |= {b + f"{name}.weight": shape for name, shape in matrices.items()}
        if spec.arch == "qwen2":
            tensors |= {
                b + "attn_q.bias": (q_rows,),
                b + "attn_k.bias": (kv_rows,),
                b + "attn_v.bias": (kv_rows,),
            }
        if spec.arch in ("qwen3", "gemma3"):
            tensors |= {
                b + "attn_q_norm.weight": (spec.head_dim,),
                b + "attn_k_norm.weight": (spec.head_dim,),
            }
    for name, shape in tensors.items():
        if len(shape) == 1:
            scale = 1.0 if name.endswith("norm.weight") else 0.1
            values = (1.0 + rng.standard_normal(shape) * 0.1) if scale == 1.0 else None
            vector = values if values is not None else rng.standard_normal(shape) * scale
            writer.add_tensor(name, vector.astype(F32))
            continue
        std = 1.0 if name == "token_embd.weight" and spec.arch != "gemma3" else 0.5
        std /= math.sqrt(shape[1]) if name != "token_embd.weight" else 1.0
        kind = _matrix_type(spec, name, shape[1])
        if kind is None:
            writer.add_tensor(name, (rng.standard_normal(shape) * std).astype(F32))
        else:
            raw = random_blocks(kind, shape[0], shape[1], rng, std)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _matrix_type(spec: Synthetic, name: str, cols: int) -> Q | None:
    role = name.split(".")[-2]
    if spec.table is not None and role in ("token_embd", "output"):
        return spec.table
    if not spec.quantized:
        return None
    kind = _MATRIX_TYPES[role]
    layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
    if role == "ffn_up" and layer % 2:
        kind = _LAYER_TYPES[layer // 2 % 2]
    if cols % GGML_QUANT_SIZES[kind][0]:
        kind = Q.Q8_0 if role != "attn_output" else _LAYER_TYPES[layer % 2]
    return kind


def _rms(x: npt.NDArray[F32], gamma: npt.NDArray[F32], eps: float) -> npt.NDArray[F32]:
    normed: npt.NDArray[F32] = (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma).astype(
        F32
    )
    return normed


def _rotate_half(
    x: npt.NDArray[F32], positions: npt.NDArray[np.float64], base: float
) -> npt.NDArray[F32]:
    dim = x.shape[-1]
    inv = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.outer(positions, inv)
    cos = np.concatenate([np.cos(angles)] * 2, -1).astype(F32)
    sin = np.concatenate([np.sin(angles)] * 2, -1).astype(F32)
    half = dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rotated * sin).astype(F32)


def _gelu_tanh(x: npt.NDArray[F32]) -> npt.NDArray[F32]:
    inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)
    result: npt.NDArray[F32] = (0.5 * x * (1 + np.tanh(inner))).astype(F32)
    return result


def _qkv_weights(model: GgufModel, b: str) -> dict[str, npt.NDArray[F32]]:
    """Block ``b``'s Q, K and V matrices, split out of phi3's stacked ``attn_qkv``."""
    if not model.has(b + "attn_qkv.weight"):
        return {part: model.floats(b + f"attn_{part}.weight") for part in "qkv"}
    h = model.hyper
    q_rows, kv_rows = h.heads * h.head_dim, h.kv_heads * h.head_dim
    q, k, v = np.split(model.floats(b + "attn_qkv.weight"), [q_rows, q_rows + kv_rows])
    return {"q": q, "k": k, "v": v}


def numpy_forward(model: GgufModel, ids: list[int]) -> npt.NDArray[F32]:
    """Logits ``[len(ids), vocab]`` of a textbook forward pass over dequantized weights.

    Written from the architectures' published definitions (llama.cpp's graphs), not from
    rbee's graph builder: sliding-window layers see the last ``sliding_window`` tokens,
    themselves included.
    """
    h, arch = model.hyper, model.arch
    w = model.floats
    n = len(ids)
    positions = np.arange(n, dtype=np.float64)
    x = w("token_embd.weight")[ids]
    if arch.scale_embedding:
        x = (x * F32(math.sqrt(h.hidden))).astype(F32)
    causal = np.triu(np.full((n, n), -np.inf, F32), 1)
    distance = np.arange(n)[:, None] - np.arange(n)[None, :]
    for i in range(h.layers):
        b = f"blk.{i}."
        local = arch.is_local(i, h.sliding_window)
        mask = np.where(local & (distance >= h.sliding_window), -np.inf, causal).astype(F32)
        y = _rms(x, w(b + "attn_norm.weight"), h.rms_eps)
        projections = []
        weights = _qkv_weights(model, b)
        for part, heads in (("q", h.heads), ("k", h.kv_heads), ("v", h.kv_heads)):
            weight = weights[part]
            if arch.permuted_qk and part != "v":
                weight = weight[unpermute_rows(heads * h.head_dim, heads)]
            p = y @ weight.T
            if model.has(b + f"attn_{part}.bias"):
                p = p + w(b + f"attn_{part}.bias")
            p = p.reshape(n, heads, h.head_dim).transpose(1, 0, 2)
            if arch.qk_norm and part != "v":
                p = _rms(p, w(b + f"attn_{part}_norm.weight"), h.rms_eps)
            projections.append(p)
        q, k, v = projections
        base = arch.local_rope_base if local and arch.local_rope_base else h.rope_base
        scaled = positions if local else positions / h.rope_scale
        q, k = _rotate_half(q, scaled, base), _rotate_half(k, scaled, base)
        group = h.heads // h.kv_heads
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(h.head_dim)
        if h.attn_softcap:
            scores = np.tanh(scores / h.attn_softcap) * h.attn_softcap
        scores = scores + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
        out = attended @ w(b + "attn_output.weight").T
        if arch.post_norms:
            out = _rms(out, w(b + "post_attention_norm.weight"), h.rms_eps)
        x = x + out
        y = _rms(x, w(b + "ffn_norm.weight"), h.rms_eps)
        if model.has(b + "ffn_gate.weight"):
            gate, up = y @ w(b + "ffn_gate.weight").T, y @ w(b + "ffn_up.weight").T
        else:  # phi3: gate and up rows stacked in ffn_up, gate first
            gate, up = np.split(y @ w(b + "ffn_up.weight").T, 2, axis=-1)
        act = _gelu_tanh(gate) if arch.activation == "gelu_tanh" else gate / (1 + np.exp(-gate))
        out = (act * up) @ w(b + "ffn_down.weight").T
        if arch.post_norms:
            out = _rms(out, w(b + "post_ffw_norm.weight"), h.rms_eps)
        x = x + out
    x = _rms(x, w("output_norm.weight"), h.rms_eps)
    head = w("output.weight") if model.has("output.weight") else w("token_embd.weight")
    logits = x @ head.T
    if h.final_softcap:
        logits = np.tanh(logits / h.final_softcap) * h.final_softcap
    return logits.astype(F32)


class _Scorer(Protocol):
    def score(self, slot: int, token_ids: Sequence[int]) -> npt.NDArray[np.float32]: ...


def first_divergence(
    engine: _Scorer, prompt: list[int], wanted: list[int]
) -> tuple[int, float] | None:
    """Where greedy decoding after ``prompt`` would leave ``wanted``, and by what logit margin
    (our top token's logit minus that of the wanted one); None if it never does.

    Teacher-forced over prompt + wanted: greedy output equals ``wanted`` up to the first
    position whose top token is another.
    """
    logits = engine.score(0, prompt + wanted)[len(prompt) - 1 : -1]
    for i, (row, token) in enumerate(zip(logits, wanted, strict=True)):
        top = int(row.argmax())
        if top != token:
            return i, float(row[top] - row[token])
    return None


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """The shape of a big llama-architecture file (`write_llama_shaped_gguf`)."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int


def write_llama_shaped_gguf(
    path: Path,
    shape: LlamaShape,
    kind: Q = Q.Q8_0,
    embedding: Q = Q.Q8_0,
    output: Q | None = None,
) -> Path:
    """A llama GGUF of ``shape`` with random blocks (``embedding`` for the token table,
    ``output`` for an untied output projection, ``None``: tied; ``kind`` for the rest), written
    one tensor at a time (memory stays one matrix, whatever the size); a byte-level vocabulary
    padded with plain tokens that spell their own names (a random model picks them, and a
    control token would print nothing), the first one the end of text."""
    s = shape
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(s.layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(s.hidden)
    writer.add_feed_forward_length(s.ffn)
    writer.add_head_count(s.heads)
    writer.add_head_count_kv(s.kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(500000.0)
    tokens = [*byte_level_tokens(), "<|end_of_text|>"]
    tokens += [f"<|reserved_{i}|>" for i in range(s.vocab - 257)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] + [1] * (s.vocab - 257))
    writer.add_token_merges([])
    writer.add_eos_token_id(256)
    h, kv = s.hidden, s.kv_heads * s.hidden // s.heads
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (s.vocab, h),
        "output_norm.weight": (h,),
    }
    if output is not None:
        shapes["output.weight"] = (s.vocab, h)
    for i in range(s.layers):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (h,),
            b + "ffn_norm.weight": (h,),
            b + "attn_q.weight": (h, h),
            b + "attn_k.weight": (kv, h),
            b + "attn_v.weight": (kv, h),
            b + "attn_output.weight": (h, h),
            b + "ffn_gate.weight": (s.ffn, h),
            b + "ffn_up.weight": (s.ffn, h),
            b + "ffn_down.weight": (h, s.ffn),
        }
    kinds = {name: kind for name in shapes} | {"token_embd.weight": embedding}
    if output is not None:
        kinds["output.weight"] = output
    for name, dims in shapes.items():
        if len(dims) == 1:
            writer.add_tensor_info(name, dims, np.dtype(np.float32), dims[0] * 4)
        else:
            values, size = GGML_QUANT_SIZES[kinds[name]]
            byte_shape = (dims[0], dims[1] // values * size)
            nbytes = byte_shape[0] * byte_shape[1]
            writer.add_tensor_info(
                name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=kinds[name]
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, dims in shapes.items():
        if len(dims) == 1:
            writer.write_tensor_data(np.ones(dims, np.float32))
            continue
        values, size = GGML_QUANT_SIZES[kinds[name]]
        rows, blocks = dims[0], dims[1] // values
        raw = rng.integers(0, 256, (rows, blocks, size), dtype=np.uint8)
        # Scales small enough that activations stay finite through every layer.
        start, end = F16_FIELDS[kinds[name]]
        d = rng.standard_normal((rows, blocks, (end - start) // 2)) * 0.02 / 64
        raw[..., start:end] = d.astype(np.float16).view(np.uint8)
        writer.write_tensor_data(raw.reshape(rows, -1))
    writer.close()
    return path
