"""`chatpipe chat`: a conversation with a model in the terminal, in-process (no server).

Each line read is a user message. The answer streams to the output as it is generated and joins the
history, so the next message is answered in context; when the context fills up, the oldest exchanges
are dropped, as the server does (serve/prompts.py). `/reset` forgets the history; `/exit` or the end
of the input quits. Prompts and notices go to `err`, so the output holds the answers only, one per line.
"""
from __future__ import annotations

from typing import TextIO

from chatpipe.serve import prompts
from chatpipe.serve.engine import Engine
from chatpipe.serve.errors import APIError
from chatpipe.serve.sampling import Sampling
from chatpipe.tasks.chat.format import Turn, validate_prompt

HELP = "one line per message; /reset forgets the conversation, /exit (or Ctrl-D) quits"


def chat(engine: Engine, sampling: Sampling, lines: TextIO, out: TextIO, err: TextIO,
         interactive: bool = False) -> None:
    history: list[Turn] = []
    err.write(f"chatting with {engine.name}: {HELP}\n")
    while True:
        if interactive:
            err.write("you> ")
            err.flush()
        line = lines.readline()
        text = line.strip()
        if not line or text == "/exit":
            return
        if text == "/reset":
            history.clear()
            err.write("(the conversation is forgotten)\n")
            continue
        if not text:
            continue
        turns = (*history, Turn("user", text))
        try:
            if problem := validate_prompt(turns):
                raise APIError(400, f"cannot send that: {problem}")
            ids = prompts.chat_ids(engine.bundle.chat, engine.encode, turns, sampling.max_tokens, engine.context,
                                   engine.context - 1)
        except APIError as e:
            err.write(f"{e.message}\n")
            continue
        answer = ""
        for event in engine.stream(ids, sampling, chat=True):
            if isinstance(event, str):
                answer += event
                out.write(event)
                out.flush()
        out.write("\n")
        out.flush()
        if answer:
            history += [Turn("user", text), Turn("assistant", answer)]
