"""The chat format, its one owner: markers, grammar, rendering, and the template transformers uses.

Chat documents keep their turn markers so the tokenizer learns them as single tokens and the model
learns where a turn starts and stops. The grammar (docs/chat-format.md):

    file         = conversation *(SEP conversation) [SEP]
    SEP          = a line holding only <|endoftext|>
    conversation = [system] user assistant *(user assistant)
    turn         = a line starting with <|system|>, <|user|> or <|assistant|>; the turn's text is the
                   rest of that line plus every following line up to the next turn or SEP

Every conversation is validated; the canonical rendering (what ingest stores) is one
`<|role|> text` block per turn, each ending in a newline. A model answers after `<|assistant|>` and
ends its turn by starting the next marker (STOP_MARKERS). This package imports nothing else of the
project: every stage, the server and the exports take their markers from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

ROLES = ("system", "user", "assistant")
MARKERS = {f"<|{r}|>": r for r in ROLES}
EOT = "<|endoftext|>"  # separates documents (and conversations); also BOS/EOS/PAD in the exports
SEPARATOR = EOT
SPECIAL_TOKENS = (EOT, *MARKERS)  # single ids in the tokenizer, never split or merged
TURN_MARKERS = ("<|user|>", "<|assistant|>", "<|system|>")  # none may appear inside an answer
STOP_MARKERS = ("<|user|>", "<|system|>", EOT)  # a model answering must end its turn on one of these
HF_SPECIAL_TOKENS = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT,
                     "additional_special_tokens": list(SPECIAL_TOKENS[1:])}  # tokenizer_config.json
# Renders exactly `render(turns)`, and with add_generation_prompt `prompt(turns)` (tested in the HF export).
CHAT_TEMPLATE = ("{%- for message in messages -%}"
                 "{{ '<|' + message['role'] + '|> ' + (message['content'] | trim) + '\\n' }}"
                 "{%- endfor -%}"
                 "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}")
_ANY_MARKER = re.compile(r"<\|[A-Za-z_]+\|>")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
# Ingest source kinds whose every document is a rendered conversation; an `hf` source holds one when its
# document's meta records `turns`. The shard stage puts loss weights (SFT's mask) on these documents.
CHAT_KINDS = ("chat_text", "chitchat", "distill")


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


def parse_lines(numbered: Iterable[tuple[int, str]]) -> Iterator[Parsed]:
    """Every conversation in numbered lines of chat text, valid or not (invalid ones carry `error`).

    Yields nothing for text that is only whitespace (the caller decides whether that is an error)."""
    start, turns, lines, problem = None, [], [], None
    role = None

    def close_turn():
        if role is not None:
            turns.append(Turn(role, "\n".join(lines).strip("\n")))

    def conversation():
        close_turn()
        if problem:
            return Parsed(start, (), problem)
        return Parsed(start, tuple(turns), validate(turns))

    for n, line in numbered:
        stripped = line.strip()
        if stripped == SEPARATOR:
            if turns or role is not None or problem:
                yield conversation()
            start, turns, lines, role, problem = None, [], [], None, None
            continue
        if stripped:
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
