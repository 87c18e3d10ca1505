"""Seeded sample generations from a chat prompt: what the training loop shows and eval judges.

Generation stops on the chat format's stop markers; `stopped` says it ended on one before its token
limit, which is what the turn rule (tasks/chat/turns.py) asks of a clean answer.
"""
from __future__ import annotations

from chatpipe.model.generate import generate
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.format import STOP_MARKERS
from chatpipe.tasks.chat.turns import SAMPLE_PROMPTS


def samples(model: Transformer, tokenizer, max_tokens: int, seed: int, prompts=SAMPLE_PROMPTS, *,
            temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None) -> list[dict]:
    """One seeded generation per prompt, stopping at the turn markers; `stopped`: it ended on one."""
    stop = [tokenizer.token_to_id(t) for t in STOP_MARKERS]
    out = []
    for prompt in prompts:
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        ids = generate(model, prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop=stop, seed=seed)
        room = min(max_tokens, model.config.block_size - len(prompt_ids))
        out.append({"prompt": prompt, "completion": tokenizer.decode(ids, skip_special_tokens=False),
                    "tokens": len(ids), "stopped": len(ids) < room})  # fewer than it could: a stop marker
    return out
