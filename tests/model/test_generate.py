"""KV cache and sampling: cached decoding must reproduce full recomputation exactly."""
from __future__ import annotations

import pytest
import torch

from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.generate import generate
from chatpipe.model.transformer import KVCache, Transformer

CONFIGS = {
    "dense": {},
    "gqa-qknorm": {"n_kv_heads": 2, "qk_norm": True},
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2, capacity_factor=0.5)},  # capacity is off in eval
}


def build(seed=0, **kw) -> Transformer:
    """A tiny random model with weights large enough that its next-token distributions are peaked and
    varied (no near-ties for argmax to flip on)."""
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=32,
                                    multiple_of=16, **kw))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model.eval()


PROMPT = [3, 14, 15, 9, 26]


@pytest.mark.parametrize("kw", CONFIGS.values(), ids=CONFIGS.keys())
def test_cached_logits_equal_full_forward(kw):
    model = build(**kw)
    idx = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.for_model(model, batch_size=2)
        # prefill 8, a 5-token chunk on top of the cache (causal within the chunk), then one at a time
        pieces = [model(idx[:, :8], cache=cache)[0], model(idx[:, 8:13], cache=cache)[0]]
        pieces += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(13, 20)]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", CONFIGS.values(), ids=CONFIGS.keys())
def test_greedy_with_cache_equals_recompute(kw):
    model = build(**kw)
    cached = generate(model, PROMPT, 20, temperature=0)
    assert cached == generate(model, PROMPT, 20, temperature=0, use_cache=False)
    assert len(cached) == 20 and len(set(cached)) > 1
    # and both equal argmax of a plain forward over the whole sequence
    with torch.no_grad():
        logits, _ = model(torch.tensor([PROMPT + cached]))
    assert logits[0, len(PROMPT) - 1:-1].argmax(-1).tolist() == cached


def test_returns_only_new_tokens_and_restores_mode():
    model = build().train()
    out = generate(model, PROMPT, 7, seed=0)
    assert len(out) == 7 and model.training
    assert generate(model, PROMPT, 0) == []


def test_stop_token_ends_and_is_excluded():
    model = build()
    full = generate(model, PROMPT, 12, temperature=0)
    stop = full[5]
    first = full.index(stop)
    assert generate(model, PROMPT, 12, temperature=0, stop=[stop, 999]) == full[:first]
    assert generate(model, PROMPT, 12, temperature=0, stop=(), use_cache=False) == full


def test_seed_reproducible():
    model = build()
    a = generate(model, PROMPT, 20, temperature=2.0, seed=1)
    assert a == generate(model, PROMPT, 20, temperature=2.0, seed=1)
    assert a == generate(model, PROMPT, 20, temperature=2.0, seed=1, use_cache=False)
    assert a != generate(model, PROMPT, 20, temperature=2.0, seed=2)


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = build()
    greedy = generate(model, PROMPT, 15, temperature=0)
    assert generate(model, PROMPT, 15, temperature=1.5, top_k=1, seed=3) == greedy
    assert generate(model, PROMPT, 15, temperature=1.5, top_p=1e-6, seed=4) == greedy
    assert generate(model, PROMPT, 15, temperature=1.5, top_k=3, top_p=1e-6, seed=5) == greedy


def test_long_prompt_and_block_size_cap():
    model = build()
    long = list(range(40)) * 2  # 80 tokens > block_size 32
    assert generate(model, long, 10, temperature=0, use_cache=False) == \
        generate(model, long[-32:], 10, temperature=0, use_cache=False)
    assert len(generate(model, long, 10, temperature=0, use_cache=False)) == 10  # sliding window
    near_full = list(range(28))
    out = generate(model, near_full, 10, temperature=0)
    assert len(out) == 4  # cached: prompt + new tokens capped at block_size
    assert out == generate(model, near_full, 10, temperature=0, use_cache=False)[:4]
    assert generate(model, long, 10, temperature=0) == []  # the kept prompt already fills the cache


def test_bad_arguments():
    model = build()
    for kw in ({"temperature": -1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            generate(model, PROMPT, 3, **kw)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], 3)
