"""The token ids a request asks the model to continue, within the model's context.

A chat's messages become turns (tasks/chat/format), are validated as a prompt and rendered with the
assistant marker last. Every turn starts with a special token, which the tokenizer never merges across,
so a conversation's ids are its turns' ids end to end. When the conversation plus max_tokens does not
fit the context, the oldest exchanges (a user turn and its answer) are dropped, never the system turn
or the last user turn: a long chat goes on with what fits instead of failing. If what is left is still
over max_prompt_tokens, or a raw completion prompt is, the request is refused (400).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from serve.errors import APIError
from tasks.chat.format import Turn, from_messages, prompt, render, validate_prompt

Encode = Callable[[str], list[int]]


def conversation(messages: list[dict]) -> tuple[Turn, ...]:
    """OpenAI-style messages → turns that await an answer, or a 400 naming what is wrong."""
    turns, error = from_messages(messages)
    problem = validate_prompt(turns) if turns else error
    if problem:
        raise APIError(400, f"messages: invalid conversation: {problem}", param="messages",
                       code="invalid_conversation")
    return turns


def chat_ids(encode: Encode, turns: Sequence[Turn], max_tokens: int, context: int,
             max_prompt_tokens: int) -> list[int]:
    """The ids of prompt(turns), oldest exchanges dropped while prompt + max_tokens exceeds the context."""
    pieces = [encode(render([turn])) for turn in turns]
    answer_marker = encode(prompt([]))
    first = 1 if turns[0].role == "system" else 0  # the system turn is always kept
    start = first
    while start < len(turns) - 1 and (sum(map(len, pieces[:first] + pieces[start:])) + len(answer_marker)
                                      + max_tokens > context):
        start += 2
    ids = [i for piece in pieces[:first] + pieces[start:] for i in piece] + answer_marker
    return _within(ids, max_prompt_tokens, "messages")


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
