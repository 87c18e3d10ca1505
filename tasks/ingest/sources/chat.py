"""Chat sources: the seed's `<|user|>`/`<|assistant|>` text files and the built-in chitchat corpus."""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path
from typing import Iterator

from chatpipe.tasks.chat.format import Parsed, Turn, parse_lines, reason, render, validate
from chatpipe.tasks.common.config import ChatTextSource, ChitchatSource
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.ingest.sources.base import Doc, Skips, reader


def _decode_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file; binary data or bad UTF-8 is an error naming the line."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a chat text file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    with f:
        n = 0
        for n, raw in enumerate(f, 1):
            if b"\x00" in raw:
                raise InputError(f"{path}:{n}: binary data (NUL byte), not a text file")
            try:
                yield n, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: invalid UTF-8 at byte {e.start} of the line "
                                 f"(0x{raw[e.start]:02x})") from None
        if n == 0:
            raise InputError(f"{path}: empty file")


def parse_file(path: Path) -> Iterator[Parsed]:
    """Every conversation in a chat text file (the grammar of tasks/chat/format.py), valid or not."""
    found = False
    for conversation in parse_lines(_decode_lines(path)):
        found = True
        yield conversation
    if not found:
        raise InputError(f"{path}: empty file (only whitespace)")


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
