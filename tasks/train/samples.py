"""Seeded sample generations from a chat prompt: what the training loop shows and eval judges.

Prompts are rendered in the run's chat format (tasks/chat/formats.py) and generation stops on its stop tokens;
`stopped` says it ended on one before its token limit, which is what the turn rule (tasks/chat/turns.py) asks
of a clean answer, and `problem` is that rule's verdict with the format's turn markers (what the gate reads).
"""
from __future__ import annotations

from chatpipe.model.generate import generate
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.turns import SAMPLE_PROMPTS, turn_problem


def samples(model: Transformer, chat, max_tokens: int, seed: int, prompts=SAMPLE_PROMPTS, *,
            temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None) -> list[dict]:
    """One seeded generation per prompt (turns), in the chat format `chat`, stopping at its stop tokens."""
    tokenizer = chat.tokenizer
    stop = [tokenizer.token_to_id(t) for t in chat.stop]
    out = []
    for turns in prompts:
        prompt = chat.prompt(turns)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        ids = generate(model, prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop=stop, seed=seed)
        room = min(max_tokens, model.config.block_size - len(prompt_ids))
        sample = {"prompt": prompt, "completion": tokenizer.decode(ids, skip_special_tokens=False),
                  "tokens": len(ids), "stopped": len(ids) < room}  # fewer than it could: a stop marker
        out.append({**sample, "problem": turn_problem(sample, chat.turn_markers)})
    return out
