"""Continuous batching: one scheduler thread runs every active generation of the server together.

Why: on a CPU a one-token decode step costs about the same for 1 row as for 32, while a thread per
generation contends for the GIL with tiny ops (throughput got worse with concurrency). So one thread owns
the model and a KV pool of `slots` rows, and loops:
- admit the waiting generations: each prompt prefilled alone (Decoder.prefill), its k/v copied into the
  next free row, its first token sampled;
- drop the cancelled ones (their client went away);
- one batched decode step (Decoder.step_rows) for all active rows, each at its own position, then each
  row's token drawn with its own sampling parameters and generator (rows with equal parameters in one
  pass), so a row's tokens do not depend on its batch.
The active rows are the pool's first rows (a leaving row is replaced by the last one), so a step attends
over a view of the pool, never a gathered copy.

- `Job`: `push(token) -> done` hands a generation a token; `end(error=None)` tells it that it left the
  batch unfinished (cancelled or failed).
- Failures: a prefill or a token's text fails its own generation, a decode step the whole batch; the
  thread goes on serving, and sleeps on a condition when idle.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

import torch

from chatpipe.model.decode import Decoder, seeded
from chatpipe.model.generate import probabilities, race
from chatpipe.model.transformer import KVCache
from chatpipe.serve.sampling import Sampling


class Job(Protocol):
    """One generation's side of the batch (serve/engine.py's Generation)."""
    cancelled: threading.Event

    def push(self, token: int) -> bool: ...

    def end(self, error: Exception | None = None) -> None: ...


@dataclass
class _Row:
    job: Job
    prompt: list[int]
    sampling: Sampling
    generator: torch.Generator | None
    token: int = 0  # the last token drawn, fed at `pos` by the next step
    pos: int = 0

    @property
    def params(self) -> tuple[float, int | None, float | None]:
        """What a vectorized draw needs equal across its rows."""
        return self.sampling.temperature, self.sampling.top_k, self.sampling.top_p


class Batcher:
    """The scheduler: `submit` jobs from any thread; one thread of its own decodes them."""

    def __init__(self, decoder: Decoder, slots: int):
        self.decoder, self.slots = decoder, slots
        self._wake = threading.Condition()
        self._waiting: list[_Row] = []  # guarded by _wake
        self._closed = False
        self._rows: list[_Row] = []     # the scheduler thread's own: row i holds the pool's row i
        self._pool: KVCache | None = None
        self._thread: threading.Thread | None = None

    def submit(self, prompt: list[int], sampling: Sampling, job: Job) -> None:
        """Queue `job` for the next admission (the caller keeps the number of jobs within `slots`)."""
        row = _Row(job, prompt, sampling, seeded(sampling.seed, self.decoder.cos2.device))
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
                self._thread.start()
            self._waiting.append(row)
            self._wake.notify()

    def close(self) -> None:
        """Take no more jobs; return once those submitted have ended."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with torch.inference_mode():
            while (admitted := self._next()) is not None:
                for row in admitted:
                    self._admit(row)
                try:
                    self._drop_cancelled()
                    if self._rows:
                        self._step()
                except Exception as e:  # a failed decode step (or a bug): every row in the batch fails
                    for row in self._rows:
                        row.job.end(e)
                    self._rows.clear()

    def _next(self) -> list[_Row] | None:
        """The rows to admit now (as many as fit), after sleeping while there is no work; None once closed and idle."""
        with self._wake:
            while not (self._waiting or self._rows or self._closed):
                self._wake.wait()
            if self._closed and not (self._waiting or self._rows):
                return None
            free = self.slots - len(self._rows)
            admitted, self._waiting = self._waiting[:free], self._waiting[free:]
            return admitted

    def _admit(self, row: _Row) -> None:
        """Prefill row's prompt into the next free pool row and hand it its first token."""
        slot, n = len(self._rows), len(row.prompt)
        try:
            if row.job.cancelled.is_set():
                row.job.end()
                return
            if self._pool is None:  # made on first use: a terminal chat's Engine never needs one
                self._pool = KVCache.for_model(self.decoder.model, batch_size=self.slots)
            logits, cache = self.decoder.prefill(row.prompt, max_len=n)  # a cache of the prompt alone, then copied
            self._pool.k[:, slot, :, :n], self._pool.v[:, slot, :, :n] = cache.k[:, 0], cache.v[:, 0]
            token = self._draw([row], logits[None])[0]
        except Exception as e:  # a bad prompt, a bug, a device failure: this job fails, the others go on
            row.job.end(e)
            return
        row.pos = n
        if self._handed(row, token):
            self._rows.append(row)

    def _drop_cancelled(self) -> None:
        for i in reversed(range(len(self._rows))):
            if self._rows[i].job.cancelled.is_set():
                self._rows[i].job.end()
                self._free(i)

    def _step(self) -> None:
        """One decode step for every active row; a row that finishes, or whose text fails, leaves the batch."""
        rows = self._rows
        tokens = torch.tensor([r.token for r in rows], device=self.decoder.cos2.device)
        positions = torch.tensor([r.pos for r in rows], device=tokens.device)
        drawn = self._draw(rows, self.decoder.step_rows(tokens, positions, self._pool))
        for i in reversed(range(len(rows))):  # backwards: _free(i) moves the last row into i, one already handed
            rows[i].pos += 1
            if not self._handed(rows[i], drawn[i]):
                self._free(i)

    @staticmethod
    def _handed(row: _Row, token: int) -> bool:
        """Give the row its next token; whether it goes on (if not, its job has ended)."""
        try:
            done = row.job.push(token)
        except Exception as e:  # its text side failed: this job fails
            row.job.end(e)
            return False
        row.token = token
        return not done

    def _free(self, i: int) -> None:
        """Take row i out of the batch, the last row (and its cache) moving into its place."""
        last = self._rows.pop()
        if i < len(self._rows):
            self._rows[i], j, n = last, len(self._rows), last.pos
            for kv in (self._pool.k, self._pool.v):
                kv[:, i, :, :n] = kv[:, j, :, :n]

    @staticmethod
    def _draw(rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Each row's next token from its logits [B, V]: greedy rows by argmax, the others by
        model/generate.py's exponential race, one pass per group of rows sampling alike."""
        tokens = logits.argmax(-1).tolist()
        groups = defaultdict(list)
        for i, row in enumerate(rows):
            if row.sampling.temperature > 0:
                groups[row.params].append(i)
        for (temperature, top_k, top_p), members in groups.items():
            probs = probabilities(logits[members], temperature, top_k, top_p)
            for i, token in zip(members, race(probs, [rows[i].generator for i in members]).tolist()):
                tokens[i] = token
        return tokens
