"""Chat sources: the seed's `<|user|>`/`<|assistant|>` text files and the built-in chitchat corpus."""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path
from typing import Iterator

from tasks.chat_format import Turn, parse_file, reason, render, validate
from tasks.config import ChatTextSource, ChitchatSource
from tasks.sources.base import Doc, Skips, reader


@reader("chat_text")
def read_chat_text(cfg: ChatTextSource, skips: Skips) -> Iterator[Doc]:
    for conv in parse_file(cfg.path):
        where = f"{cfg.path}:{conv.line}"
        if conv.error:
            skips.add(f"invalid_conversation: {reason(conv.error)}", f"{where} ({conv.error})")
            continue
        yield Doc(render(conv.turns), {"file": str(cfg.path), "line": conv.line, "turns": len(conv.turns)})


def chitchat_turns(messages: list[list[dict]]) -> list[Turn]:
    """Alternating speakers → user/assistant turns; consecutive messages of one speaker are joined.

    The first speaker is the user. A trailing user turn (no answer) is dropped, so a valid
    conversation ends with the assistant.
    """
    flat = [m for group in messages for m in group]
    turns = []
    for i, (_, run) in enumerate(groupby(flat, key=lambda m: m["sender"])):
        text = "\n".join(m["text"].strip() for m in run if m["text"].strip())
        turns.append(Turn("user" if i % 2 == 0 else "assistant", text))
    if turns and turns[-1].role == "user":
        turns.pop()
    return turns


@reader("chitchat")
def read_chitchat(cfg: ChitchatSource, skips: Skips) -> Iterator[Doc]:
    import chitchat_dataset

    path = Path(chitchat_dataset.__file__).parent / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for i, (conv_id, conv) in enumerate(data.items()):
        if cfg.max_conversations and i >= cfg.max_conversations:
            break
        turns = chitchat_turns(conv["messages"])
        error = validate(turns) if turns else "no reply (one speaker only)"
        if error:
            skips.add(f"invalid_conversation: {reason(error)}", f"chitchat:{conv_id} ({error})")
            continue
        yield Doc(render(turns), {"conversation": conv_id, "turns": len(turns)})
