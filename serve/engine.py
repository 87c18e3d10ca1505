"""The inference engine: a loaded bundle that turns prompt ids into streamed text, alone or many at once.

`Engine.stream` is the single-stream generator (`chatpipe chat` and the benchmarks call it directly):
serve/decode.py's KV-cache decoder (model/generate.py's sampling, fewer ops per token), one token at a
time, through a TextStream, then one `Finish`. The model's stop markers (the bundle's
generation_config "stop") always end an answer; a chat answer (`chat=True`) is a turn's text, so it
also ends where a turn cannot go on ("<|" or "|>" would make the conversation invalid when the client
sends it back) and is stripped.

`Engine.start` is the server's side: at most `max_concurrent` generations run at once, each in a worker
thread (the event loop never runs the model), handing its pieces to the loop through an asyncio queue.
A request waits up to `queue_timeout` seconds for a free slot and is then refused (`Busy`, a 429):
bounded waiting absorbs bursts, and clients see back-pressure instead of an unbounded queue.
Cancelling a generation (its client went away) stops it before its next token and frees its slot.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from serve.decode import Decoder
from serve.text import TextStream
from tasks.bundle import Bundle
from tasks.errors import InputError

TURN_BREAKERS = ("<|", "|>")  # text no chat turn may contain (tasks/chat_format.validate)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.max_tokens < 1 or self.temperature < 0 or (self.top_k is not None and self.top_k < 1)
                or (self.top_p is not None and not 0 < self.top_p <= 1)):
            raise InputError(f"sampling: need max_tokens >= 1, temperature >= 0, top_k >= 1 and 0 < top_p <= 1; "
                             f"got {self.max_tokens}, {self.temperature}, {self.top_k}, {self.top_p}")


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
        self._workers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="generate")

    def defaults(self) -> Sampling:
        """The bundle's generation_config.json as sampling params."""
        g = self.bundle.generation
        return Sampling(max_tokens=g["max_new_tokens"], temperature=g["temperature"], top_p=g.get("top_p"),
                        top_k=g.get("top_k"))

    def encode(self, text: str) -> list[int]:
        return self.bundle.tokenizer.encode(text, add_special_tokens=False).ids

    def stream(self, prompt_ids: list[int], sampling: Sampling, chat: bool = False,
               cancelled: threading.Event | None = None) -> Iterator[str | Finish]:
        """Text pieces as they become final, then one Finish. Prompt: 1 to context - 1 ids.

        Setting `cancelled` ends the generation before its next token, without a Finish.
        """
        stops = self.stop_strings + sampling.stop + (TURN_BREAKERS if chat else ())
        text = TextStream(self.bundle.tokenizer, stops, strip=chat)
        room = min(sampling.max_tokens, self.context - len(prompt_ids))
        n = 0
        for n, token in enumerate(self.decoder.tokens(
                prompt_ids, sampling.max_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, stop=self.stop_ids, seed=sampling.seed), 1):
            if cancelled is not None and cancelled.is_set():
                return
            if piece := text.push(token):
                yield piece
            if text.stopped:
                break
        if piece := text.finish():
            yield piece
        yield Finish("stop" if text.stopped or n < room else "length", len(prompt_ids), n)

    def complete(self, prompt_ids: list[int], sampling: Sampling, chat: bool = False) -> tuple[str, Finish]:
        """The whole answer and how it ended."""
        *pieces, finish = self.stream(prompt_ids, sampling, chat)
        return "".join(pieces), finish

    async def start(self, prompt_ids: list[int], sampling: Sampling, chat: bool = False) -> Generation:
        """Take a slot (waiting up to queue_timeout, else Busy) and start generating in a worker thread."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise Busy(f"all {self.max_concurrent} generation slots stayed busy for {self.queue_timeout:g} s; "
                       "retry later") from None
        self.active += 1
        loop = asyncio.get_running_loop()
        generation = Generation(loop)
        done = loop.run_in_executor(self._workers, generation.run,
                                    self.stream(prompt_ids, sampling, chat, generation.cancelled))
        done.add_done_callback(lambda _: self._release())
        return generation

    def _release(self) -> None:
        self.active -= 1
        self._slots.release()

    def close(self) -> None:
        """Stop taking work; generations in progress finish first."""
        self._workers.shutdown()


class Generation:
    """One running generation as seen from the event loop: iterate for batches of pieces; `cancel` ends it."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._queue = loop, asyncio.Queue()
        self.cancelled = threading.Event()

    def run(self, events: Iterator[str | Finish]) -> None:
        """The worker thread's part: drive `events` (which stop once `cancelled` is set), handing each to the loop."""
        try:
            for event in events:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except Exception as e:  # a bug or a device failure: the consumer reports it
            self._loop.call_soon_threadsafe(self._queue.put_nowait, e)
        finally:
            events.close()

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
