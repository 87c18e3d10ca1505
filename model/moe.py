"""Mixture-of-experts MLP: a router sends each token to its top_k SwiGLU experts.

Why each piece is there:

- Router: one linear map to n_experts logits, softmax, top_k, and the top_k weights renormalized to sum
  to 1 (Qwen3/Mixtral style), so the output scale does not depend on how peaked the router is.
- Capacity: each expert takes at most ceil(capacity_factor * top_k * tokens / n_experts) assignments per
  forward. Overflow assignments skip that expert (the token still gets its other experts, and the
  residual connection carries it through). First choices claim capacity before second choices, and within
  a choice rank earlier tokens come first (GShard's order). This bounds the work of a hot expert during
  training; the dropped fraction is recorded in `last_stats` so it can be logged. Capacity is a training
  device only: in eval mode every token reaches all of its experts, so cached decoding (one token at a
  time) and a full forward agree exactly. Note that dropping couples the tokens of a batch, so in training
  mode a later token can change whether an earlier one is dropped; eval mode is strictly causal.
- Load balancing: the Switch Transformer loss n_experts * sum_i f_i * P_i, f_i the fraction of the
  token-assignments routed to expert i (before capacity), P_i the mean router probability of expert i.
  It is 1.0 when routing is uniform and grows as routing collapses onto few experts; P_i carries the
  gradient (f_i is a count).
- Experts are batched parameters (w1, w3: [E, D, H], w2: [E, H, D]) computed by a loop over the experts
  that received tokens, gathering their tokens and scattering back with index_add. Clear and exact;
  a grouped-GEMM kernel would replace the loop on a GPU.
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
