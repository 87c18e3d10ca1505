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
  The second term is attention's q·k and attention·v over seq_len keys, with n_head * head_dim in place
  of n_embd (equal unless head_dim is set otherwise, as in Qwen3; any number of KV heads); like PaLM it
  does not halve for causality. seq_len defaults to block_size.
- training memory (`train_memory`): weights, grads, optimizer states and saved activations, for fp32 or
  bf16 weights, with or without activation checkpointing, full or LoRA fine-tuning; per GPU of `gpus`, each
  with its share of the batch, replicated (ddp) or sharded (fsdp, tasks/train/parallel.py).
"""
from __future__ import annotations

from .config import ModelConfig

GiB = 2 ** 30


def _layer_params(c: ModelConfig, i: int) -> dict:
    """Parameters of layer i: total, active (top_k experts only), and matrices (2-D weights)."""
    d, hd = c.n_embd, c.head_dim
    attn = 2 * d * c.n_head * hd + 2 * d * c.n_kv_heads * hd           # wq, wo; wk, wv
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
    """Training FLOPs per token: 6 * (active matmul parameters) + 12 * n_layer * n_head * head_dim * seq_len."""
    p = param_counts(cfg)
    matmul = p["active"] - p["embedding"] + (p["embedding"] if cfg.tie_embeddings else 0)
    return 6 * matmul + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * (seq_len or cfg.block_size)


# Optimizer state per parameter. Muon keeps one momentum for the hidden matrices and runs AdamW (two
# moments) on the rest: the embedding, the LM head and the norm gains (as in Keller Jordan's / nanochat's).
# (trainable parameters, of which hidden matrices) -> optimizer state elements.
OPTIMIZER_STATES = {
    "adamw": lambda total, matrices: 2 * total,
    "muon": lambda total, matrices: matrices + 2 * (total - matrices),
    "sgd": lambda total, matrices: total,  # momentum
}
WEIGHT_BYTES = {"fp32": 4, "bf16": 2}
SHARDED = {"ddp": False, "fsdp": True}  # train.parallel: are weights, grads and optimizer states split over GPUs?
LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # the block linears; MoE experts are not adapted


def lora_params(cfg: ModelConfig, rank: int) -> int:
    """Adapter parameters: rank * (in + out) for each of LORA_TARGETS in every layer (attention only in MoE layers)."""
    d, qd, kvd, h = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.ffn_hidden
    attn = (d + qd) + 2 * (d + kvd) + (qd + d)                       # wq; wk, wv; wo
    mlp = 3 * (d + h)                                                 # w1, w3: d -> h; w2: h -> d
    return rank * sum(attn + (0 if cfg.is_moe_layer(i) else mlp) for i in range(cfg.n_layer))


def _activations_per_token(c: ModelConfig, dtype_bytes: int, checkpointing: bool = False,
                            lora_rank: int | None = None) -> float:
    """Bytes saved for the backward pass, per token (a count of saved tensors; expect +-30%).

    Per layer, in elements: attention 2d + 4*q_d + 3*kv_d (norm in/out, q/k/v, q/k after RoPE, attention
    output and its copy into wo; q_d = n_head * head_dim, = d unless head_dim is set) assuming a fused
    attention that keeps no T x T matrix; dense MLP 2d + 4h
    (norm in/out, w1 and w3 outputs, silu, product); MoE 2d + 2E + top_k * (2d + 4h_e) (router
    logits/probabilities, and per assignment the gathered input, the four SwiGLU tensors and the
    weighted output). LoRA adds each adapter's rank-wide middle (rank per adapted linear). The head keeps the
    final norm (2d) and float32 logits with their softmax (2V * 4 B). With activation checkpointing each
    layer keeps only its input (d); one block's internals live at a time, while backward recomputes it.
    """
    d, q_d, kv_d = c.n_embd, c.n_head * c.head_dim, c.n_kv_heads * c.head_dim
    layers = []
    for i in range(c.n_layer):
        moe = c.is_moe_layer(i)
        mlp = (2 * d + 2 * c.moe.n_experts + c.moe.top_k * (2 * d + 4 * c.expert_hidden)) if moe \
            else 2 * d + 4 * c.ffn_hidden
        adapters = (lora_rank or 0) * (4 if moe else len(LORA_TARGETS))
        layers.append(2 * d + 4 * q_d + 3 * kv_d + mlp + adapters)
    kept = c.n_layer * d + max(layers) if checkpointing else sum(layers)
    return (kept + 2 * d) * dtype_bytes + 2 * c.vocab_size * 4


def train_memory(cfg: ModelConfig, batch_size: int, seq_len: int | None = None, optimizer: str = "adamw",
                 weights: str = "fp32", activation_checkpointing: bool = False, lora_rank: int | None = None,
                 gpus: int = 1, parallel: str = "ddp") -> dict:
    """Training memory in bytes, per GPU: weights, grads, optimizer (states), activations, (fsdp) gathered, total.

    As tasks/train trains: weights "fp32": weights, grads and optimizer states in fp32. "bf16" (train.weights):
    weights, grads, AdamW moments and activations in bf16, no fp32 master copy. lora_rank R (train.lora): the
    base weights are frozen at the weights' dtype (no grads or states); only the LORA_TARGETS adapters train,
    in fp32 as peft keeps them (weights, grads, states); their weights count in "weights".
    activation_checkpointing: see _activations_per_token.
    gpus, parallel: each GPU holds the activations of its share of the batch (ceil(batch_size / gpus) sequences);
    ddp replicates weights, grads and optimizer states on every GPU; fsdp keeps 1/gpus of each (rounded up) and
    `gathered`: the root's parameters (embedding, head, final norm: FSDP2 keeps the root unsharded through the
    step) and the largest block's, all-gathered whole in the weights' dtype (bf16 mixed precision on CUDA halves
    an fp32 gather; FSDP's prefetch of the next block can add one more block).
    """
    if parallel not in SHARDED:
        raise ValueError(f"parallel: must be one of {', '.join(SHARDED)}, got {parallel!r}")
    if gpus < 1:
        raise ValueError(f"gpus: must be >= 1, got {gpus}")
    if lora_rank and SHARDED[parallel]:
        raise ValueError("lora_rank: LoRA trains under ddp (train.parallel=fsdp refuses it)")
    if optimizer not in OPTIMIZER_STATES:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATES)}")
    if weights not in WEIGHT_BYTES:
        raise ValueError(f"weights: must be one of {', '.join(WEIGHT_BYTES)}, got {weights!r}")
    if lora_rank is not None and lora_rank < 1:
        raise ValueError(f"lora_rank: must be >= 1, got {lora_rank}")
    p, wb = param_counts(cfg), WEIGHT_BYTES[weights]
    if lora_rank:
        trained = matrices = lora_params(cfg, lora_rank)  # the adapters are all matrices
    else:
        trained, matrices = p["total"], sum(_layer_params(cfg, i)["matrices"] for i in range(cfg.n_layer))
    tokens = -(-batch_size // gpus) * (seq_len or cfg.block_size)
    tb = 4 if lora_rank else wb  # bytes per trained element: fp32 adapters, else the weights' dtype
    shards = gpus if SHARDED[parallel] else 1
    out = {"weights": p["total"] * wb + (trained * 4 if lora_rank else 0),
           "grads": trained * tb,
           "optimizer": OPTIMIZER_STATES[optimizer](trained, matrices) * tb}
    out = {k: -(-v // shards) for k, v in out.items()}
    out["activations"] = int(tokens * _activations_per_token(cfg, wb, activation_checkpointing, lora_rank))
    if SHARDED[parallel]:
        layers = [_layer_params(cfg, i)["total"] for i in range(cfg.n_layer)]
        out["gathered"] = (p["total"] - sum(layers) + max(layers)) * wb
    out["total"] = sum(out.values())
    return out


def bundle_bytes(c: ModelConfig) -> dict:
    """Bytes of a bundle's weights (tasks/common/bundle.py: float32, a ternary linear's codes packed 4 to a byte
    plus its scale and shape) and how many of the block linears are ternary; `float` is the same model all
    float32, for the ratio."""
    d, hd, hidden = c.n_embd, c.head_dim, c.ffn_hidden
    shapes = {"wq": d * c.n_head * hd, "wk": d * c.n_kv_heads * hd, "wv": d * c.n_kv_heads * hd,
              "wo": c.n_head * hd * d, "w1": d * hidden, "w3": d * hidden, "w2": hidden * d}
    total = 4 * param_counts(c)["total"]
    packed, ternary, linears = total, 0, 0
    for i in range(c.n_layer):
        for role, n in ([] if c.is_moe_layer(i) else shapes.items()):
            linears += 1
            if c.is_ternary(i, role):
                ternary += 1
                packed -= 4 * n - (-(-n // 4) + 4 + 16)  # codes, a float32 scale, an int64 [2] shape
    return {"bytes": packed, "float": total, "ternary_linears": ternary, "linears": linears}


def _n(x: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return str(int(x))


def _counted(c: ModelConfig, weights: str, activation_checkpointing: bool, lora_rank: int | None, gpus: int,
             parallel: str) -> str:
    """What train_memory counts under these options, in words."""
    if lora_rank:
        trained = (f"frozen {weights} base; LoRA rank {lora_rank} on {','.join(LORA_TARGETS)} "
                   f"({_n(lora_params(c, lora_rank))} params) trained in fp32: weights, grads, optimizer states")
    elif weights == "bf16":
        trained = "bf16 weights, grads and optimizer states (no fp32 master copy)"
    else:
        trained = "fp32 weights, grads and optimizer states"
    kept = "one block's input per layer + one block's internals (checkpointing)" if activation_checkpointing \
        else "every block's internals"
    spread = (f"; sharded over {gpus} GPUs (fsdp), gathered: the root (embedding, head) + the largest block whole"
              if SHARDED[parallel] else f"; replicated on each of {gpus} GPUs (ddp)" if gpus > 1 else "")
    return f"{trained}{spread}; activations: {kept}"


def describe(name_or_cfg: str | ModelConfig, batch_size: int = 16, optimizer: str = "adamw", weights: str = "fp32",
             activation_checkpointing: bool = False, lora_rank: int | None = None, seq_len: int | None = None,
             gpus: int = 1, parallel: str = "ddp", name: str | None = None) -> str:
    """A small table: shape, params total/active, FLOPs/token, training memory per GPU at batch_size x seq_len
    (default block_size) over `gpus` GPUs, ddp or fsdp.

    `name_or_cfg`: a preset name, a checkpoint ("hf:<dir or id>", "gguf:<file or short name>": model/checkpoints.py
    reads its config) or a ModelConfig."""
    from . import checkpoints
    from .presets import preset
    if isinstance(name_or_cfg, ModelConfig):
        name, c = name or "custom", name_or_cfg
    else:
        name = name_or_cfg
        c = checkpoints.read_config(name) if checkpoints.prefix(name) else preset(name)
    p, T = param_counts(c), seq_len or c.block_size
    m = train_memory(c, batch_size, T, optimizer=optimizer, weights=weights,
                     activation_checkpointing=activation_checkpointing, lora_rank=lora_rank, gpus=gpus,
                     parallel=parallel)
    moe = f", MoE {c.moe.n_experts} experts top-{c.moe.top_k} (hidden {c.expert_hidden}) every {c.moe.every}" \
        if c.moe else ""
    ffn = f"ffn {c.ffn_hidden}" if not all(c.is_moe_layer(i) for i in range(c.n_layer)) else "no dense MLP"
    rows = [
        f"{name}: {c.n_layer} layers x {c.n_embd}, {c.n_head} heads / {c.n_kv_heads} KV (head_dim {c.head_dim}), "
        f"{ffn}{moe}, vocab {c.vocab_size}, block {c.block_size}"
        f"{', qk-norm' if c.qk_norm else ''}, {'tied' if c.tie_embeddings else 'untied'} embeddings",
        f"  params        total {_n(p['total'])}   active {_n(p['active'])}   embedding {_n(p['embedding'])}",
        f"  FLOPs/token   {_n(flops_per_token(c, T))}  (6N + 12 L d T, T={T})",
        f"  train memory  batch {batch_size} x {T}, {optimizer}, {weights}"
        + (f", per GPU of {gpus} ({parallel})" if gpus > 1 or SHARDED[parallel] else "") + ": "
        + "  ".join(f"{k} {v / GiB:.2f} GiB" for k, v in m.items()),
        f"                ({_counted(c, weights, activation_checkpointing, lora_rank, gpus, parallel)})",
    ]
    if c.quant == "ternary":
        b = bundle_bytes(c)
        rows.append(f"  ternary       {b['ternary_linears']} of {b['linears']} block linears"
                    + (f" ({', '.join(c.ternary.roles)}; float: the first {c.ternary.skip_first} and last "
                       f"{c.ternary.skip_last} blocks)" if c.ternary else "")
                    + f": bundle weights {b['bytes'] / 2**20:.1f} MiB, {b['bytes'] / b['float']:.1%} of float32's "
                      f"{b['float'] / 2**20:.1f} MiB")
    return "\n".join(rows)
