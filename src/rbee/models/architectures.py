"""The decoder families rbee imports, each one small description of its block.

All of them are pre-norm decoders with grouped-query attention, rotary positions and a gated
FFN; what differs is data the graph builder (`rbee.models.graph`) and the validation in
`rbee.models.gguf_file` read from an `Architecture`:

- ``llama`` (Llama 2/3, Mistral, SmolLM): llama.cpp's converter permutes the Q and K rows for
  its interleaved rotary form; rbee undoes that and uses rotate-half.
- ``qwen2``: biases on Q, K and V.
- ``qwen3``: an RMS norm over each head of Q and of K before the rotary.
- ``gemma3``: embeddings scaled by ``sqrt(hidden)``, Q/K norms, a tanh-GELU gate, RMS norms
  after attention and after the FFN too (before each residual add), and five of every six layers
  attending within a sliding window, with a rotary base of their own (10,000, as llama.cpp's
  ``gemma3`` sets it; the GGUF's ``rope.freq_base`` is the global layers').
- ``phi3`` (Phi-3 4k-context files, Phi-4): Q, K and V stacked in one ``attn_qkv`` matrix
  and the FFN's gate and up rows in one ``ffn_up`` matrix (gate first), rotate-half rotary as
  stored. Its sliding window is ignored, as llama.cpp ignores it (its converters wrote a wrong
  one); the long-context files' LongRoPE factors (``rope_factors_long``/``_short``) are refused.

Norm weights are used as the GGUF stores them: Gemma's ``1 + w`` is already folded in by
llama.cpp's converter.
"""

from __future__ import annotations

import dataclasses

__all__ = ["ARCHITECTURES", "Architecture"]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How one GGUF architecture's decoder block is built."""

    name: str
    permuted_qk: bool = False
    """llama.cpp's converter interleaved each head's Q/K rows (undone at import)."""
    qkv_bias: bool = False
    """``attn_q/k/v.bias`` are required (they are used wherever present)."""
    qk_norm: bool = False
    """``attn_q_norm`` / ``attn_k_norm``: RMS norm of each head of Q and K before the rotary."""
    post_norms: bool = False
    """``post_attention_norm`` / ``post_ffw_norm`` on the block's two outputs."""
    activation: str = "silu"
    """The FFN gate's activation: ``silu`` or ``gelu_tanh``."""
    scale_embedding: bool = False
    """Token embeddings are multiplied by ``sqrt(hidden)``."""
    global_every: int = 0
    """With a sliding window: layers ``n-1, 2n-1, ...`` attend globally, the others locally."""
    local_rope_base: float = 0.0
    """The rotary base of sliding-window layers (0: the model's own)."""
    qkv: tuple[str, ...] = ("attn_q", "attn_k", "attn_v")
    """The matrices whose rows are Q, K and V, in that order (one name: stacked in one)."""
    gate_up: tuple[str, ...] = ("ffn_gate", "ffn_up")
    """The matrices whose rows are the FFN's gate and up projections (one name: stacked)."""
    refused_tensors: tuple[str, ...] = ()
    """Tensors whose presence means a variant rbee does not build."""

    def is_local(self, layer: int, sliding_window: int) -> bool:
        """Whether ``layer`` attends only within the sliding window."""
        if not sliding_window or not self.global_every:
            return False
        return layer % self.global_every != self.global_every - 1

    def block_matrices(
        self, q_rows: int, kv_rows: int, hidden: int, ffn: int
    ) -> dict[str, tuple[int, int]]:
        """The shape of each matrix of one block, by name within the block."""
        qkv = [q_rows, kv_rows, kv_rows]
        rows = dict(zip(self.qkv, qkv if len(self.qkv) > 1 else [sum(qkv)], strict=True))
        gate_up = [ffn, ffn] if len(self.gate_up) > 1 else [2 * ffn]
        rows |= dict(zip(self.gate_up, gate_up, strict=True))
        shapes = {name: (count, hidden) for name, count in rows.items()}
        shapes["attn_output"] = (hidden, q_rows)
        shapes["ffn_down"] = (hidden, ffn)
        return shapes

    def block_norms(self) -> list[str]:
        """The norm weights of one block, ``[hidden]`` each."""
        norms = ["attn_norm", "ffn_norm"]
        if self.post_norms:
            norms += ["post_attention_norm", "post_ffw_norm"]
        return norms


ARCHITECTURES = {
    arch.name: arch
    for arch in (
        Architecture("llama", permuted_qk=True),
        Architecture("qwen2", qkv_bias=True),
        Architecture("qwen3", qk_norm=True),
        Architecture(
            "gemma3",
            qk_norm=True,
            post_norms=True,
            activation="gelu_tanh",
            scale_embedding=True,
            global_every=6,
            local_rope_base=10000.0,
        ),
        Architecture(
            "phi3",
            qkv=("attn_qkv",),
            gate_up=("ffn_up",),
            refused_tensors=("rope_factors_long.weight", "rope_factors_short.weight"),
        ),
    )
}
