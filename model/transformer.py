"""A decoder-only transformer in the LLaMA/Qwen3 mould, readable top to bottom.

    tokens -> embedding -> n_layer x [x + attn(norm(x)); x + mlp(norm(x))] -> norm -> LM head -> logits

- Pre-norm RMSNorm and a final norm: the residual stream stays an identity path, so deep stacks train
  without warmup tricks. No biases.
- RoPE on q and k: relative positions from the q·k product, no position table, and a KV cache only needs
  the new tokens' offset.
- Grouped-query attention: n_kv_heads <= n_head, each KV head shared by n_head / n_kv_heads query heads
  (a KV cache that many times smaller); n_kv_heads = n_head is MHA.
- Optional QK-norm (Qwen3, OLMo2): RMSNorm over head_dim on q and k before RoPE, bounding attention logits.
- SwiGLU MLP (w2(silu(w1 x) * w3 x)), or in MoE layers a router over SwiGLU experts (model/moe.py).
- Init: normal(0, 0.02), output projections (wo, w2) scaled by 1/sqrt(2 * n_layer) (GPT-2); the LM head
  shares the embedding when tie_embeddings. `checkpoint_blocks()` turns on activation checkpointing.
- Loss: mean cross-entropy (targets -1 ignored) + aux_loss_coef * the MoE layers' load-balancing losses
  (`last_aux_loss` keeps the unweighted sum).
- Kernels (KERNELS, default "torch"): `use_kernels("triton")` (CUDA) runs the LM head + loss through
  kernels/cuda, never holding the batch's fp32 logits (a training forward with targets returns logits None);
  `use_kernels("chunked")` does the same in plain torch (kernels/cross_entropy.py). The norms are torch's own
  `F.rms_norm` (a fused kernel since PyTorch 2.11; our Triton RMSNorm was 3.6× slower, docs/LOG.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ROLES, ModelConfig
from .moe import MoE
from .quant import BitLinear


class KVCache:
    """Per-layer keys and values, preallocated for max_len positions; `pos` = positions filled so far.

    The model writes each layer's new k/v at [pos, pos + T) and attends over [0, pos + T); the
    Transformer advances `pos` by T after the last layer.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (n_layer, batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len, self.pos = max_len, 0

    @classmethod
    def for_model(cls, model: Transformer, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        c, p = model.config, next(model.parameters())
        return cls(c.n_layer, batch_size, c.n_kv_heads, max_len or c.block_size, c.head_dim, p.device, p.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len={self.max_len}")
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), freqs)   # [max_len, head_dim / 2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[i], x[i + d/2]) of x [B, T, H, d] by position-dependent angles (HF's layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask) -> torch.Tensor:
    """SDPA over [B, H, T, d]. bf16 on CPU runs in fp32: torch's CPU flash kernel is much slower backward in
    bf16 than the casts cost (measured: docs/LOG.md, issue 15)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True, **mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **mask)


def _triton():
    from chatpipe.kernels.cuda import linear_cross_entropy

    return linear_cross_entropy


def _chunked():
    from chatpipe.kernels.cross_entropy import linear_cross_entropy

    return linear_cross_entropy


# name -> () -> linear_cross_entropy(h, weight, targets); None: the logits, then F.cross_entropy
KERNELS = {"torch": lambda: None, "triton": _triton, "chunked": _chunked}


def linears(c: ModelConfig, layer: int) -> dict[str, type[nn.Linear]]:
    """Block `layer`'s linear class per role: BitLinear where the config makes it ternary, else nn.Linear
    (embeddings, norms and the head always stay float)."""
    return {role: BitLinear if c.is_ternary(layer, role) else nn.Linear for role in ROLES}


FLOAT = dict.fromkeys(ROLES, nn.Linear)


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_kv_heads: int, head_dim: int, qk_norm: bool, eps: float,
                 linear: dict[str, type[nn.Linear]] = FLOAT):
        super().__init__()
        self.n_head, self.n_kv_heads, self.head_dim = n_head, n_kv_heads, head_dim  # n_head * head_dim may be != n_embd
        self.wq = linear["wq"](n_embd, n_head * self.head_dim, bias=False)
        self.wk = linear["wk"](n_embd, n_kv_heads * self.head_dim, bias=False)
        self.wv = linear["wv"](n_embd, n_kv_heads * self.head_dim, bias=False)
        self.wo = linear["wo"](n_head * self.head_dim, n_embd, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, T, self.n_head, self.head_dim))
        k = self.k_norm(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim))
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k, v = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        S = k.size(2)
        if S == T:  # no past: plain causal attention
            y = attend(q, k, v, is_causal=True)
        else:       # new chunk after S - T cached positions: query i sees keys 0 .. S - T + i
            y = attend(q, k, v, attn_mask=torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T))
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU. Returns (output, aux loss) like MoE so a block need not know which one it holds."""

    def __init__(self, n_embd: int, hidden: int, linear: dict[str, type[nn.Linear]] = FLOAT):
        super().__init__()
        self.w1 = linear["w1"](n_embd, hidden, bias=False)  # gate
        self.w3 = linear["w3"](n_embd, hidden, bias=False)  # up
        self.w2 = linear["w2"](hidden, n_embd, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x)), x.new_zeros((), dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, attn: Attention, mlp: nn.Module, n_embd: int, eps: float):
        super().__init__()
        self.attn_norm, self.attn = nn.RMSNorm(n_embd, eps=eps), attn
        self.mlp_norm, self.mlp = nn.RMSNorm(n_embd, eps=eps), mlp

    def forward(self, x, cos, sin, cache, layer):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer)
        h, aux = self.mlp(self.mlp_norm(x))
        return x + h, aux


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        moe = c.moe
        self.aux_loss_coef = moe.aux_loss_coef if moe else 0.0
        self.tok_emb = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(
            Block(Attention(c.n_embd, c.n_head, c.n_kv_heads, c.head_dim, c.qk_norm, c.norm_eps, linears(c, i)),
                  MoE(c.n_embd, c.expert_hidden, moe.n_experts, moe.top_k, moe.capacity_factor)
                  if c.is_moe_layer(i) else MLP(c.n_embd, c.ffn_hidden, linears(c, i)),
                  c.n_embd, c.norm_eps)
            for i in range(c.n_layer))
        self.norm = nn.RMSNorm(c.n_embd, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(c.head_dim, c.block_size, c.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.last_aux_loss = torch.zeros(())
        self.fused_loss = None  # linear + cross-entropy kernel (use_kernels), None: logits then F.cross_entropy
        self.checkpointing = False  # checkpoint_blocks
        self.init_weights()

    def use_kernels(self, name: str) -> Transformer:
        """Run the LM head + loss through KERNELS[name] ("torch" restores the logits and F.cross_entropy)."""
        self.fused_loss = KERNELS[name]()
        return self

    def checkpoint_blocks(self, on: bool = True) -> Transformer:
        """Activation checkpointing: a training forward (grad enabled, no KV cache) keeps only each block's input
        and recomputes the block's internals in backward (torch.utils.checkpoint, non-reentrant). Same loss and
        gradients; about one more forward of compute for activation memory of one block instead of n_layer."""
        self.checkpointing = on
        return self

    @torch.no_grad()
    def init_weights(self):
        out_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():  # a tied matrix appears once, as tok_emb.weight
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, out_std if name.endswith(("wo.weight", "w2.weight", ".w2")) else 0.02)
            else:
                nn.init.ones_(p)  # RMSNorm gains

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions exceeds block_size={self.config.block_size}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.tok_emb(idx)
        aux = []
        recompute = self.checkpointing and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:
                x, a = checkpoint(block, x, cos, sin, None, i, use_reentrant=False)
            else:
                x, a = block(x, cos, sin, cache, i)
            aux.append(a)
        if cache is not None:
            cache.pos += T
        self.last_aux_loss = torch.stack(aux).sum()
        if targets is not None and self.fused_loss is not None:
            loss = self.fused_loss(self.norm(x).flatten(0, 1), self.lm_head.weight, targets.reshape(-1))
            return None, loss + self.aux_loss_coef * self.last_aux_loss
        logits = self.lm_head(self.norm(x)).float()  # a no-op in float32; upcasts bf16 for the softmax
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss + self.aux_loss_coef * self.last_aux_loss

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameters, a tied matrix counted once; exclude_embedding drops the token table (tied: the head too)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if exclude_embedding else n
