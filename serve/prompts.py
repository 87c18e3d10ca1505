"""The token ids a request asks the model to continue, within the model's context.

A chat's messages become turns (tasks/chat/format), are validated as a prompt and rendered in the served
model's chat format (tasks/chat/formats.py: ours, or its own template) with the generation prompt last.
When the conversation plus max_tokens does not fit the context, the oldest exchanges (a user turn and its
answer) are dropped, never the system turn or the last user turn: a long chat goes on with what fits
instead of failing. A turn's cost is what it adds to a rendered conversation; the newest exchanges are
taken first, so only what fits (and one exchange more) is tokenized: a conversation of 30,000 messages
costs what one of 30 does. The kept turns are then rendered and encoded whole (dropping one more exchange
in the rare case a template adds more than the costs said). If what is left is still over
max_prompt_tokens, or a raw completion prompt is, the request is refused (400).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from chatpipe.serve.errors import APIError
from chatpipe.tasks.chat.format import Turn, from_messages, validate_prompt

Encode = Callable[[str], list[int]]
_ANCHOR = Turn("system", ".")  # what a turn's cost is measured after


def conversation(messages: list[dict]) -> tuple[Turn, ...]:
    """OpenAI-style messages → turns that await an answer, or a 400 naming what is wrong."""
    turns, error = from_messages(messages)
    problem = validate_prompt(turns) if turns else error
    if problem:
        raise APIError(400, f"messages: invalid conversation: {problem}", param="messages",
                       code="invalid_conversation")
    return turns


def chat_ids(chat, encode: Encode, turns: Sequence[Turn], max_tokens: int, context: int,
             max_prompt_tokens: int) -> list[int]:
    """The ids of chat.prompt(turns), oldest exchanges dropped while prompt + max_tokens exceeds the context."""
    first = 1 if turns[0].role == "system" else 0  # the system turn is always kept, and the last turn
    anchor = len(encode(chat.render([_ANCHOR])))

    def cost(turn: Turn) -> int:
        return len(encode(chat.render([_ANCHOR, turn]))) - anchor

    kept = [*turns[:first], turns[-1]]
    used = len(encode(chat.prompt(kept))) + max_tokens
    newer = []  # the exchanges kept, newest first
    for end in range(len(turns) - 1, first, -2):  # turns[end - 2:end]: one exchange, newest first
        used += sum(cost(turn) for turn in turns[end - 2:end])
        if used > context:
            break
        newer.append(turns[end - 2:end])
    while True:
        ids = encode(chat.prompt([*turns[:first], *(t for exchange in reversed(newer) for t in exchange), turns[-1]]))
        if len(ids) + max_tokens <= context or not newer:
            return _within(ids, max_prompt_tokens, "messages")
        newer.pop()


def text_ids(encode: Encode, text: str, max_prompt_tokens: int) -> list[int]:
    ids = encode(text)
    if not ids:
        raise APIError(400, "prompt: is empty; send some text to continue", param="prompt")
    return _within(ids, max_prompt_tokens, "prompt")


def _within(ids: list[int], max_prompt_tokens: int, param: str) -> list[int]:
    if len(ids) > max_prompt_tokens:
        raise APIError(400, f"{param}: the prompt is {len(ids)} tokens; this server takes at most "
                            f"{max_prompt_tokens}", param=param, code="context_length_exceeded")
    return ids
