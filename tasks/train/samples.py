"""Seeded sample generations from a chat prompt: what the training loop shows and eval judges.

Prompts are rendered in the run's chat format (tasks/chat/formats.py) and generation stops on its stop tokens;
`stopped` says it ended on one before its token limit, which is what the turn rule (tasks/chat/turns.py) asks
of a clean answer, and `problem` is that rule's verdict with the format's turn markers (what the gate reads).
"""
from __future__ import annotations

from chatpipe.model.decode import Decoder
from chatpipe.model.generate import generate
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.turns import SAMPLE_PROMPTS, turn_problem


def samples(model: Transformer, chat, max_tokens: int, seed: int, prompts=SAMPLE_PROMPTS, *,
            temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
            batched: bool = False) -> list[dict]:
    """One seeded generation per prompt (turns), in the chat format `chat`, stopping at its stop tokens; the same
    tokens either way: one prompt at a time through the model's own forward (training: FSDP's collectives), or
    `batched` (eval: a plain model in eval mode), all prompts decoded together by model/decode.py."""
    tokenizer = chat.tokenizer
    stop = [tokenizer.token_to_id(t) for t in chat.stop]
    texts = [chat.prompt(turns) for turns in prompts]
    keep = model.config.block_size - 1  # a prompt longer than the context keeps its last tokens
    prompt_ids = [tokenizer.encode(text, add_special_tokens=False).ids[-keep:] for text in texts]
    sampling = {"top_k": top_k, "top_p": top_p, "stop": stop}
    if batched:
        generated = Decoder(model).batch(prompt_ids, max_tokens, temperatures=[temperature] * len(texts),
                                         seeds=[seed] * len(texts), **sampling)
    else:
        generated = [generate(model, p, max_tokens, temperature=temperature, seed=seed, **sampling) for p in prompt_ids]
    out = []
    for prompt, p, ids in zip(texts, prompt_ids, generated):
        room = min(max_tokens, model.config.block_size - len(p))
        sample = {"prompt": prompt, "completion": tokenizer.decode(ids, skip_special_tokens=False),
                  "tokens": len(ids), "stopped": len(ids) < room}  # fewer than it could: a stop marker
        out.append({**sample, "problem": turn_problem(sample, chat.turn_markers)})
    return out
