"""Autoregressive sampling from a Transformer, one sequence at a time.

With use_cache (the default) the prompt is run once through the model (prefill), filling a KVCache, and
then each new token is a one-position forward that attends to the cache: O(T) work per token instead of
O(T^2). The cache holds block_size positions and RoPE positions are absolute, so a cached sequence
(prompt + new tokens) stops at block_size. Without the cache every step reruns the model on the last
block_size tokens (a sliding window), which is slower but never stops early. The two give the same tokens
while the sequence fits in block_size (the model is put in eval mode, where MoE capacity is off).

Sampling: logits / temperature, then keep the top_k most likely tokens, then the smallest set whose
probability reaches top_p (nucleus; the most likely token is always kept), then draw. temperature 0 is
greedy (argmax). A seed makes the draw reproducible through a torch.Generator on the model's device.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .transformer import KVCache, Transformer


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(k, logits.numel())).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True)
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop = cum - torch.softmax(sorted_logits, dim=-1) >= p  # mass before this token already reaches p
    return logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """One token id from a [V] row of logits."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None:
        logits = _top_k(logits, top_k)
    if top_p is not None:
        logits = _top_p(logits, top_p)
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop: Sequence[int] = (),
             seed: int | None = None, use_cache: bool = True) -> list[int]:
    """The new tokens after `prompt` (a stop token ends generation and is not returned)."""
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    block, device = model.config.block_size, next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    stop, seq = set(stop), list(prompt)[-block:]
    cache = KVCache.for_model(model) if use_cache else None
    step = list(seq)  # what the next cached forward consumes: the whole prompt first, then the last token
    was_training, out = model.training, []
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if cache is not None and len(seq) >= block:
                break  # a cached sequence (prompt + new tokens) is capped at block_size
            logits, _ = model(torch.tensor([step if cache is not None else seq[-block:]], device=device), cache=cache)
            tok = sample_token(logits[0, -1], temperature, top_k, top_p, generator)
            if tok in stop:
                break
            out.append(tok)
            seq.append(tok)
            step = [tok]
    finally:
        model.train(was_training)
    return out
