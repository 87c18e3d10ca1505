"""Autoregressive sampling from a Transformer: one sequence (`generate`); a batch of them is model/decode.py's
`Decoder.batch`.

- KV cache (use_cache, the default): the prompt is run once (prefill), then each new token is a
  one-position forward over the cache, O(T) per token instead of O(T^2). RoPE positions are absolute, so a
  cached sequence stops at block_size; without the cache each step reruns the last block_size tokens (a
  sliding window: slower, never stops early). Both give the same tokens while the sequence fits.
- Sampling: logits / temperature, top_k, then top_p (the most likely token always kept), then an
  exponential race argmax(p / E), E ~ Exp(1): exactly p, and one vectorized pass over a batch, unlike
  per-row torch.multinomial. temperature 0 is greedy; a seed makes the draw reproducible (a
  torch.Generator on the model's device).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from .transformer import KVCache, Transformer


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(-1) - probs >= p  # mass before this token already reaches p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def probabilities(logits: torch.Tensor, temperature: float | torch.Tensor, top_k: int | None,
                   top_p: float | None) -> torch.Tensor:
    """The sampling distribution over the last dim of [..., V] logits (temperature > 0, or [..., 1] of them)."""
    logits = logits.float() / temperature
    if top_k is not None:
        logits = _top_k(logits, top_k)
    if top_p is not None:
        logits = _top_p(logits, top_p)
    return torch.softmax(logits, dim=-1)


def race(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Indices drawn from each row of [B, V] probabilities; row r's noise comes from generators[r]."""
    uniform = torch.stack([torch.rand(probs.size(-1), generator=g, device=probs.device) for g in generators])
    noise = -torch.log1p(-uniform)  # Exp(1)
    return (probs / noise.clamp_(min=torch.finfo(noise.dtype).tiny)).argmax(-1)  # 0 / tiny stays 0


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> int:
    """One token id from a [V] row of logits."""
    if temperature == 0:
        return int(logits.argmax())
    return int(race(probabilities(logits, temperature, top_k, top_p)[None], [generator])[0])


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError(f"need temperature >= 0, top_k >= 1, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")


@contextmanager
def _inference(model: Transformer) -> Iterator[torch.device]:
    """Eval mode and no autograd for the duration; the model's device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def generate(model: Transformer, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop: Sequence[int] = (),
             seed: int | None = None, use_cache: bool = True) -> list[int]:
    """The new tokens after `prompt` (a stop token ends generation and is not returned)."""
    _check_sampling(temperature, top_k, top_p)
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    block = model.config.block_size
    stop, seq = set(stop), list(prompt)[-block:]
    out = []
    with _inference(model) as device:
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        cache = KVCache.for_model(model) if use_cache else None
        step = list(seq)  # what the next cached forward consumes: the whole prompt first, then the last token
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
    return out
