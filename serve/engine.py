"""The inference engine: a loaded bundle that turns prompt ids into streamed text, alone or many at once.

- `Engine.stream`: one generation (`chatpipe chat`, the benchmarks), model/decode.py's decoder one token
  at a time through a TextStream, then one `Finish`.
- `Engine.start`: the server's side. At most `max_concurrent` generations, decoded together in one
  scheduler thread (serve/batcher.py; the event loop never runs the model), each handing its pieces to
  the loop through an asyncio queue. A request waits up to `queue_timeout` seconds for a slot, then is
  refused (`Busy`, a 429): back-pressure instead of an unbounded queue. A cancelled generation leaves
  the batch before the next step.
- How an answer ends (`Answer`, both sides): the bundle's stop markers, stop strings, the token limit; a
  chat answer (`chat=True`) also ends where a turn cannot go on ("<|" or "|>" would make the conversation
  invalid when sent back) and is stripped.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from chatpipe.model.decode import Decoder
from chatpipe.serve.batcher import Batcher
from chatpipe.serve.sampling import Sampling
from chatpipe.serve.text import TextStream
from chatpipe.tasks.common.bundle import Bundle

TURN_BREAKERS = ("<|", "|>")  # text no chat turn may contain (tasks/chat/format.validate)


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop": a stop marker or string ended it; "length": max_tokens or the context did
    prompt_tokens: int
    completion_tokens: int


class Busy(Exception):
    """Every generation slot stayed busy for the whole queue wait."""


class Engine:
    def __init__(self, bundle: Bundle, max_concurrent: int = 8, queue_timeout: float = 30.0):
        if max_concurrent < 1 or queue_timeout < 0:
            raise ValueError(f"need max_concurrent >= 1 and queue_timeout >= 0; got {max_concurrent}, {queue_timeout}")
        self.bundle, self.name, self.context = bundle, bundle.name, bundle.config.block_size
        self.max_concurrent, self.queue_timeout = max_concurrent, queue_timeout
        self.decoder = Decoder(bundle.model)
        self.stop_ids = bundle.stop_ids
        self.stop_strings = tuple(s for s in bundle.generation["stop"] if bundle.tokenizer.token_to_id(s) is None)
        self.active = 0  # generations holding a slot (read by /health)
        self._slots: asyncio.Semaphore | None = None  # made on the server's event loop
        self._batcher = Batcher(self.decoder, max_concurrent)

    def defaults(self) -> Sampling:
        """The bundle's generation_config.json as sampling params."""
        g = self.bundle.generation
        return Sampling(max_tokens=g["max_new_tokens"], temperature=g["temperature"], top_p=g.get("top_p"),
                        top_k=g.get("top_k"))

    def encode(self, text: str) -> list[int]:
        return self.bundle.tokenizer.encode(text, add_special_tokens=False).ids

    def stream(self, prompt_ids: list[int], sampling: Sampling, chat: bool = False) -> Iterator[str | Finish]:
        """Text pieces as they become final, then one Finish. Prompt: 1 to context - 1 ids."""
        answer = Answer(self, prompt_ids, sampling, chat)
        for token in self.decoder.tokens(prompt_ids, sampling.max_tokens, temperature=sampling.temperature,
                                         top_k=sampling.top_k, top_p=sampling.top_p, seed=sampling.seed):
            if piece := answer.push(token):
                yield piece
            if answer.done:
                break
        yield from answer.finish()

    def complete(self, prompt_ids: list[int], sampling: Sampling, chat: bool = False) -> tuple[str, Finish]:
        """The whole answer and how it ended."""
        *pieces, finish = self.stream(prompt_ids, sampling, chat)
        return "".join(pieces), finish

    async def start(self, prompt_ids: list[int], sampling: Sampling, chat: bool = False) -> Generation:
        """Take a slot (waiting up to queue_timeout, else Busy) and join the scheduler's batch."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(f"all {self.max_concurrent} generation slots stayed busy for {self.queue_timeout:g} s; "
                       "retry later") from None
        self.active += 1
        generation = Generation(asyncio.get_running_loop(), Answer(self, prompt_ids, sampling, chat), self._release)
        try:
            self._batcher.submit(prompt_ids, sampling, generation)
        except RuntimeError:
            self._release()
            raise
        return generation

    def _release(self) -> None:
        self.active -= 1
        self._slots.release()

    def close(self) -> None:
        """Stop taking work; generations in progress finish first."""
        self._batcher.close()


class Answer:
    """One answer's text: generated token ids in (`push`), text pieces out, then how it ended (`finish`).

    A stop marker id, a stop string, max_tokens or the context ends it (`done`)."""

    def __init__(self, engine: Engine, prompt_ids: list[int], sampling: Sampling, chat: bool):
        stops = engine.stop_strings + sampling.stop + (TURN_BREAKERS if chat else ())
        self._text = TextStream(engine.bundle.tokenizer, stops, strip=chat)
        self._stop_ids, self._prompt_tokens = engine.stop_ids, len(prompt_ids)
        self._room = min(sampling.max_tokens, engine.context - len(prompt_ids))
        self._tokens, self._marker = 0, False

    def push(self, token: int) -> str:
        """The text that may be shown now (often "")."""
        if token in self._stop_ids:
            self._marker = True
            return ""
        self._tokens += 1
        return self._text.push(token)

    @property
    def done(self) -> bool:
        return self._marker or self._text.stopped or self._tokens == self._room

    def finish(self) -> list[str | Finish]:
        """The text held back (if any), then the Finish."""
        tail = self._text.finish()
        finish = Finish("stop" if self._text.stopped or self._tokens < self._room else "length",
                        self._prompt_tokens, self._tokens)
        return [tail, finish] if tail else [finish]


class Generation:
    """One running generation, between the scheduler thread (`push` its tokens, then `end`) and the event
    loop (iterate `batches` for its pieces; `cancel` ends it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: Answer, ended: Callable[[], None]):
        self._loop, self._queue, self._answer, self._ended = loop, asyncio.Queue(), answer, ended
        self.cancelled = threading.Event()

    def push(self, token: int) -> bool:
        """The scheduler's part: the next token, its text handed to the loop; whether the answer is complete.

        A complete answer releases its slot before its Finish reaches the loop: a client that has its
        answer finds the slot free."""
        events = [piece] if (piece := self._answer.push(token)) else []
        if done := self._answer.done:
            events += self._answer.finish()
            self._to_loop(self._ended)
        for event in events:
            self._to_loop(self._queue.put_nowait, event)
        return done

    def end(self, error: Exception | None = None) -> None:
        """The scheduler's part: the generation left the batch unfinished, cancelled or failed with `error`
        (which the consumer then raises)."""
        self._to_loop(self._ended)
        if error is not None:
            self._to_loop(self._queue.put_nowait, error)

    def _to_loop(self, callback: Callable, *args) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting for this any more
            self._loop.call_soon_threadsafe(callback, *args)

    def cancel(self) -> None:
        self.cancelled.set()

    async def batches(self) -> AsyncIterator[list[str | Finish]]:
        """Everything generated since the last batch (at least one event), until the Finish."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if isinstance(batch[-1], Exception):
                raise batch[-1]
            yield batch
            if isinstance(batch[-1], Finish):
                return
