"""Analytic sizes of a ModelConfig: parameters, FLOPs per token, training memory. Nothing is allocated,
so the full qwen3-hybrid (78B) is counted in microseconds; tests check the parameter counts against
`sum(p.numel())` of instantiated small models.

Conventions:
- embedding = the token table (vocab_size * n_embd). An untied LM head is a separate matrix of the same
  size and counts in total; a tied one is the same matrix, counted once.
- active = parameters a token uses: in MoE layers only top_k of the n_experts (the router is dense).
- FLOPs per token (training: forward + backward) = 6 * N + 12 * n_layer * n_embd * seq_len, the
  PaLM / nanoGPT estimate. N = active parameters that do matrix multiplies: everything but the embedding
  lookup (a gather), plus the LM head (vocab_size * n_embd), which is a matmul whether or not it is tied.
  The second term is attention's q·k and attention·v over seq_len keys (n_head * head_dim = n_embd for
  any number of KV heads); like PaLM it does not halve for causality. seq_len defaults to block_size.
"""
from __future__ import annotations

from .config import ModelConfig

GiB = 2 ** 30


def _layer_params(c: ModelConfig, i: int) -> dict:
    """Parameters of layer i: total, active (top_k experts only), and matrices (2-D weights)."""
    d, hd = c.n_embd, c.head_dim
    attn = 2 * d * c.n_head * hd + 2 * d * c.kv_heads * hd           # wq, wo; wk, wv
    norms = 2 * d + (2 * hd if c.qk_norm else 0)                      # attn/mlp RMSNorm (+ q/k norm)
    if c.is_moe_layer(i):
        expert, router = 3 * d * c.expert_hidden, d * c.moe.n_experts
        mlp, mlp_active = router + c.moe.n_experts * expert, router + c.moe.top_k * expert
    else:
        mlp = mlp_active = 3 * d * c.ffn_hidden
    return {"total": attn + norms + mlp, "active": attn + norms + mlp_active, "matrices": attn + mlp}


def param_counts(cfg: ModelConfig) -> dict:
    """total, active and embedding parameter counts; equals sum(p.numel()) of Transformer(cfg)."""
    emb = cfg.vocab_size * cfg.n_embd
    head = 0 if cfg.tie_embeddings else emb
    layers = [_layer_params(cfg, i) for i in range(cfg.n_layer)]
    base = emb + head + cfg.n_embd                                     # + final RMSNorm
    return {"total": base + sum(x["total"] for x in layers),
            "active": base + sum(x["active"] for x in layers),
            "embedding": emb}


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token: 6 * (active matmul parameters) + 12 * n_layer * n_embd * seq_len."""
    p = param_counts(cfg)
    matmul = p["active"] - p["embedding"] + (p["embedding"] if cfg.tie_embeddings else 0)
    return 6 * matmul + 12 * cfg.n_layer * cfg.n_embd * (seq_len or cfg.block_size)


# Optimizer state per parameter. Muon keeps one momentum for the hidden matrices and runs AdamW (two
# moments) on the rest: the embedding, the LM head and the norm gains (as in Keller Jordan's / nanochat's).
OPTIMIZER_STATES = {
    "adamw": lambda c, p, matrices: 2 * p["total"],
    "muon": lambda c, p, matrices: matrices + 2 * (p["total"] - matrices),
    "sgd": lambda c, p, matrices: p["total"],  # momentum
}


def _activations_per_token(c: ModelConfig, dtype_bytes: int) -> float:
    """Bytes saved for the backward pass, per token (a count of saved tensors; expect +-30%).

    Per layer, in elements: attention 6d + 3*kv_d (norm in/out, q/k/v, q/k after RoPE, attention output
    and its copy into wo) assuming a fused attention that keeps no T x T matrix; dense MLP 2d + 4h
    (norm in/out, w1 and w3 outputs, silu, product); MoE 2d + 2E + top_k * (2d + 4h_e) (router
    logits/probabilities, and per assignment the gathered input, the four SwiGLU tensors and the
    weighted output). The head keeps the final norm (2d) and float32 logits with their softmax (2V * 4 B).
    """
    d, kv_d = c.n_embd, c.kv_heads * c.head_dim
    per_layer = 0
    for i in range(c.n_layer):
        mlp = (2 * d + 2 * c.moe.n_experts + c.moe.top_k * (2 * d + 4 * c.expert_hidden)) if c.is_moe_layer(i) \
            else 2 * d + 4 * c.ffn_hidden
        per_layer += 6 * d + 3 * kv_d + mlp
    return (per_layer + 2 * d) * dtype_bytes + 2 * c.vocab_size * 4


def train_memory(cfg: ModelConfig, batch_size: int, seq_len: int | None = None, optimizer: str = "adamw",
                 dtype_bytes: int = 4) -> dict:
    """Training memory in bytes: weights, grads, optimizer states (all at dtype_bytes), activations, total."""
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATES)}")
    p = param_counts(cfg)
    matrices = sum(_layer_params(cfg, i)["matrices"] for i in range(cfg.n_layer))
    out = {"weights": p["total"] * dtype_bytes,
           "grads": p["total"] * dtype_bytes,
           "optimizer": OPTIMIZER_STATES[optimizer](cfg, p, matrices) * dtype_bytes,
           "activations": int(batch_size * (seq_len or cfg.block_size) * _activations_per_token(cfg, dtype_bytes))}
    out["total"] = sum(out.values())
    return out


def _n(x: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return str(int(x))


def describe(name_or_cfg: str | ModelConfig, batch_size: int = 16, optimizer: str = "adamw") -> str:
    """A small table: shape, params total/active, FLOPs/token, training memory at batch_size x block_size."""
    from .presets import preset
    name, c = (name_or_cfg, preset(name_or_cfg)) if isinstance(name_or_cfg, str) else ("custom", name_or_cfg)
    p, m = param_counts(c), train_memory(c, batch_size, optimizer=optimizer)
    moe = f", MoE {c.moe.n_experts} experts top-{c.moe.top_k} (hidden {c.expert_hidden}) every {c.moe.every}" \
        if c.moe else ""
    ffn = f"ffn {c.ffn_hidden}" if not all(c.is_moe_layer(i) for i in range(c.n_layer)) else "no dense MLP"
    rows = [
        f"{name}: {c.n_layer} layers x {c.n_embd}, {c.n_head} heads / {c.kv_heads} KV (head_dim {c.head_dim}), "
        f"{ffn}{moe}, vocab {c.vocab_size}, block {c.block_size}"
        f"{', qk-norm' if c.qk_norm else ''}, {'tied' if c.tie_embeddings else 'untied'} embeddings",
        f"  params        total {_n(p['total'])}   active {_n(p['active'])}   embedding {_n(p['embedding'])}",
        f"  FLOPs/token   {_n(flops_per_token(c))}  (6N + 12 L d T, T={c.block_size})",
        f"  train memory  batch {batch_size} x {c.block_size}, {optimizer}, fp32: "
        + "  ".join(f"{k} {v / GiB:.2f} GiB" for k, v in m.items()),
    ]
    return "\n".join(rows)
