"""Named model shapes. `preset(name, **overrides)` returns one, with fields replaced (for example the
vocab_size of the trained tokenizer, or n_layer from params.yaml). Counts below are from model.info and
are checked against instantiated models in tests/model/test_model.py.

- chat-7m: the seed chat model (vocab 4096, 6 layers, 256 wide, 8 heads, block 256). With the standard
  SwiGLU width (8/3 -> 704) and an untied LM head it is 6.92M parameters. That is the same parameter
  budget as the GPT-2-style layout the seed plan's "7M" refers to (4x GELU MLP = 8/3x SwiGLU; untied
  head), minus the learned position table RoPE replaces. Untying also gives the small model an output
  matrix of its own, which is worth 1M parameters at a 4096 vocabulary.
- nano-125m: GPT-2 small's shape (12 x 768, 12 heads, vocab 50257, tied) with SwiGLU at 8/3 (hidden 2048,
  the GPT-2 MLP's parameter count) and context 2048: 123.6M (GPT-2 small: 124.4M, of which 1.6M is the
  position table).
- nano-1b: 24 x 1024, 16 heads / 4 KV heads, ffn 2.667, vocab 50257, tied, context 2048. Despite the
  name it is 0.32B: at 1024 wide, 24 layers hold 266M; reaching 1B needs ~2048 wide (e.g. 16 x 2048).
- qwen3-hybrid: Qwen3-Next-80B-A3B's proportions: 48 layers, 2048 wide, 16 query / 2 KV heads
  (head_dim 128; Qwen3-Next uses 256 with a wider attention), QK-norm, 512 experts of hidden 512 with
  top-10 routing in every layer, untied vocab 151936, context 4096. 78.4B total, 2.64B active
  (Qwen3-Next: 80B / 3B; it also has a shared expert and 3 of 4 layers are Gated DeltaNet linear
  attention, which this model does not implement; every layer here is full softmax attention).
  Too large to instantiate here; model.info counts it without allocating.
- qwen3-hybrid-mini: the same family, instantiable on a CPU: 4 x 128, 4 heads / 2 KV heads, QK-norm,
  16 experts of hidden 128 with top-2 (active expert width 2 x n_embd, as 10 x 512 = 2.5 x 2048 in the
  full one), vocab 4096 (the chat tokenizer's), untied, block 256.

A preset is kept as the fields it was registered with, and `preset()` builds a new ModelConfig from them and the
overrides, so the widths it leaves unset (n_kv_heads, head_dim, ffn_hidden) are derived from the overridden
shape (e.g. n_embd: 128), not copied from the preset's.
"""
from __future__ import annotations

import dataclasses

from .config import FieldError, ModelConfig, MoEConfig

PRESETS: dict[str, ModelConfig] = {}
_FIELDS: dict[str, dict] = {}  # the fields each preset was registered with


def register(name: str, **fields) -> ModelConfig:
    _FIELDS[name] = fields
    PRESETS[name] = ModelConfig(**fields)
    return PRESETS[name]


register("chat-7m", vocab_size=4096, n_layer=6, n_embd=256, n_head=8, block_size=256, tie_embeddings=False)
register("nano-125m", vocab_size=50257, n_layer=12, n_embd=768, n_head=12, block_size=2048)
register("nano-1b", vocab_size=50257, n_layer=24, n_embd=1024, n_head=16, n_kv_heads=4, block_size=2048)
register("qwen3-hybrid", vocab_size=151936, n_layer=48, n_embd=2048, n_head=16, n_kv_heads=2, block_size=4096,
         qk_norm=True, tie_embeddings=False, rope_theta=1e7, norm_eps=1e-6,
         moe=MoEConfig(n_experts=512, top_k=10, expert_ffn_mult=0.25, aux_loss_coef=0.001))
register("qwen3-hybrid-mini", vocab_size=4096, n_layer=4, n_embd=128, n_head=4, n_kv_heads=2, block_size=256,
         qk_norm=True, tie_embeddings=False, moe=MoEConfig(n_experts=16, top_k=2, expert_ffn_mult=1.0))


def preset(name: str, **overrides) -> ModelConfig:
    """The named config with `overrides` replacing fields (validated again; `moe` may be a mapping)."""
    if name not in PRESETS:
        raise FieldError("preset", f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {sorted(unknown)} in overrides for preset {name!r}")
    if isinstance(overrides.get("moe"), dict):  # from params: the MoE section as a mapping
        overrides["moe"] = MoEConfig.from_dict(overrides["moe"])
    return ModelConfig(**{**_FIELDS[name], **overrides})
