"""model: the transformer this project trains, and what you need around it.

A LLaMA/Qwen3-style decoder (RMSNorm, RoPE, GQA, optional QK-norm, SwiGLU or mixture-of-experts MLPs),
a KV cache and a sampler, named shapes, and analytic parameter/FLOP/memory counts. It depends on torch
and our kernels (kernels/) only: the pipeline (tasks, flows, chatpipe) and the server import it, never
the reverse.

    config.py       ModelConfig, MoEConfig: validated, JSON round trip
    transformer.py  Transformer, KVCache
    moe.py          the MoE MLP (router, capacity, Switch load-balancing loss)
    quant.py        BitLinear (BitNet b1.58 ternary weights, int8 activations, STE) and 2-bit packing
    ternary_linear.py  TernaryLinear: a served ternary model's linears on integer codes (no float weights)
    generate.py     generate(): prefill + cached decoding; temperature, top-k, top-p, stop tokens, seed;
                    sample_batch() for many rows at once
    decode.py       Decoder: the fast KV-cache token loop the server runs (fused steps, one row or a pool
                    of rows at their own positions; ternary models included)
    presets.py      PRESETS, preset(): chat-7m, nano-125m, nano-1b, qwen3-hybrid(-mini)
    info.py         param_counts, flops_per_token, train_memory, describe (no allocation)
    hf.py           Llama / Qwen3 checkpoints in: resolve, read_config, load_weights; NAMES (shared with export)
"""
from .config import ModelConfig, MoEConfig
from .generate import generate
from .info import describe, flops_per_token, param_counts, train_memory
from .presets import PRESETS, preset
from .transformer import KVCache, Transformer

__all__ = ["ModelConfig", "MoEConfig", "Transformer", "KVCache", "generate", "preset", "PRESETS",
           "param_counts", "flops_per_token", "train_memory", "describe"]
