"""Mixture-of-experts MLP: a router sends each token to its top_k SwiGLU experts.

- Router: a linear map to n_experts logits, softmax, top_k, the top_k weights renormalized to sum to 1
  (Qwen3/Mixtral), so the output scale does not depend on how peaked the router is.
- Capacity (training only): each expert takes at most ceil(capacity_factor * top_k * tokens / n_experts)
  assignments; overflow skips that expert (the residual carries the token), first choices before second,
  earlier tokens first (GShard). It bounds a hot expert's work; the dropped fraction is in `last_stats`.
  Dropping couples a batch's tokens, so eval mode has no capacity: cached decoding and a full forward
  agree exactly, and it is strictly causal.
- Load balancing: the Switch Transformer loss n_experts * sum_i f_i * P_i (f_i: share of assignments to
  expert i before capacity, P_i: its mean router probability, which carries the gradient); 1.0 when
  uniform, growing as routing collapses.
- Experts: batched parameters (w1, w3: [E, D, H], w2: [E, H, D]) run by a loop over the experts that got
  tokens (gather, then index_add back). Clear and exact; on a GPU a grouped GEMM would replace the loop.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MoE(nn.Module):
    def __init__(self, n_embd: int, hidden: int, n_experts: int, top_k: int, capacity_factor: float):
        super().__init__()
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.router = nn.Linear(n_embd, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(n_experts, n_embd, hidden))  # gate
        self.w3 = nn.Parameter(torch.empty(n_experts, n_embd, hidden))  # up
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, n_embd))  # down (an output projection)
        self.last_stats: dict = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape, x = x.shape, x.reshape(-1, x.size(-1))
        N, E, k = x.size(0), self.n_experts, self.top_k
        probs = F.softmax(self.router(x).float(), dim=-1)                   # [N, E]
        weights, experts = probs.topk(k, dim=-1)                            # [N, k]
        weights = weights / weights.sum(-1, keepdim=True)

        # Assignments in priority order: all first choices (by token), then all second choices, ...
        flat_expert = experts.t().reshape(-1)                               # [k*N]
        flat_token = torch.arange(N, device=x.device).repeat(k)
        flat_weight = weights.t().reshape(-1)
        capacity = math.ceil(self.capacity_factor * k * N / E) if self.training else N

        out = torch.zeros_like(x)
        load = torch.bincount(flat_expert, minlength=E)                     # assignments per expert
        for e in load.nonzero().flatten().tolist():
            slots = (flat_expert == e).nonzero().flatten()[:capacity]
            tok = flat_token[slots]
            h = x[tok]
            y = (F.silu(h @ self.w1[e]) * (h @ self.w3[e])) @ self.w2[e]
            out.index_add_(0, tok, (y * flat_weight[slots, None]).to(out.dtype))

        f = load.float() / (N * k)
        aux = E * (f * probs.mean(0)).sum()
        dropped = int((load - capacity).clamp(min=0).sum())
        self.last_stats = {"capacity": capacity, "dropped": dropped, "dropped_frac": dropped / (N * k),
                           "load": load.tolist()}
        return out.view(shape), aux
