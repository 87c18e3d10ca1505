"""The chat grammar: parse, validate and render conversations.

Chat documents keep their turn markers so the tokenizer learns them as single tokens and the model
learns where a turn starts and stops. The grammar (docs/chat-format.md):

    file         = conversation *(SEP conversation) [SEP]
    SEP          = a line holding only <|endoftext|>
    conversation = [system] user assistant *(user assistant)
    turn         = a line starting with <|system|>, <|user|> or <|assistant|>; the turn's text is the
                   rest of that line plus every following line up to the next turn or SEP

Every conversation is validated; the canonical rendering (what ingest stores) is one
`<|role|> text` block per turn, each ending in a newline.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from tasks.errors import InputError

ROLES = ("system", "user", "assistant")
MARKERS = {f"<|{r}|>": r for r in ROLES}
SEPARATOR = "<|endoftext|>"
_ANY_MARKER = re.compile(r"<\|[A-Za-z_]+\|>")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


@dataclass(frozen=True)
class Parsed:
    """One conversation from a file: its turns, or why it is invalid; `line` is where it starts."""
    line: int
    turns: tuple[Turn, ...] = ()
    error: str | None = None


def validate(turns: Iterable[Turn]) -> str | None:
    """None if the turns form a valid conversation, else the reason (a category, details in parens)."""
    turns = list(turns)
    if not turns:
        return "empty conversation"
    body = turns[1:] if turns[0].role == "system" else turns
    for i, turn in enumerate(turns):
        if turn.role not in ROLES:
            return f"unknown role ({turn.role!r})"
        if not turn.text.strip():
            return f"empty {turn.role} turn"
        if found := _ANY_MARKER.search(turn.text):
            return f"marker inside turn text ({found.group()} in a {turn.role} turn)"
        if "<|" in turn.text or "|>" in turn.text:
            return f"unbalanced marker ('<|' or '|>' in a {turn.role} turn)"
        if turn.role == "system" and i > 0:
            return "system turn after the first turn"
    if not any(t.role == "assistant" for t in body):
        return "no assistant turn"
    for i, turn in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            return f"turns do not alternate (turn {i + 1} is {turn.role}, expected {expected})"
    if body[-1].role != "assistant":
        return "ends with a user turn (no answer)"
    return None


def reason(error: str) -> str:
    """The category of a validation error, without its details: a stable key for skip counts."""
    return error.split(" (")[0]


def render(turns: Iterable[Turn]) -> str:
    return "".join(f"<|{t.role}|> {t.text.strip()}\n" for t in turns)


def validate_prompt(turns: Iterable[Turn]) -> str | None:
    """None if the turns await an assistant answer (valid once one is appended), else the reason."""
    turns = list(turns)
    return validate([*turns, Turn("assistant", "answer")]) if turns else "empty conversation"


def prompt(turns: Iterable[Turn]) -> str:
    """The text a model continues to answer: the rendered turns, then the assistant marker."""
    return render(turns) + "<|assistant|>"


def from_messages(messages: list) -> tuple[tuple[Turn, ...], str | None]:
    """OpenAI/HF-style [{"role", "content"}] → turns, plus the validation error if any."""
    turns = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return (), "message is not a {role, content} mapping with string content"
        role = ROLE_ALIASES.get(str(m.get("role")), str(m.get("role")))
        turns.append(Turn(role, m["content"]))
    return tuple(turns), validate(turns)


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
    """Every conversation in a chat text file, valid or not (invalid ones carry `error`)."""
    start, turns, lines, problem = None, [], [], None
    role = None
    nonblank = False

    def close_turn():
        if role is not None:
            turns.append(Turn(role, "\n".join(lines).strip("\n")))

    def conversation():
        close_turn()
        if problem:
            return Parsed(start, (), problem)
        return Parsed(start, tuple(turns), validate(turns))

    for n, line in _decode_lines(path):
        stripped = line.strip()
        if stripped == SEPARATOR:
            if turns or role is not None or problem:
                yield conversation()
            start, turns, lines, role, problem = None, [], [], None, None
            continue
        if stripped:
            nonblank = True
            start = start or n
        marker = _ANY_MARKER.match(line)
        if marker and marker.group() in MARKERS:
            close_turn()
            role, lines = MARKERS[marker.group()], [line[marker.end():].removeprefix(" ")]
        elif marker:
            problem = problem or f"unknown marker (line {n}: {marker.group()})"
        elif role is None and stripped:
            problem = problem or f"text outside a turn (line {n})"
        else:
            lines.append(line)
    if turns or role is not None or problem:
        yield conversation()
    if not nonblank:
        raise InputError(f"{path}: empty file (only whitespace)")
