"""How one answer is sampled: `Sampling`, the parameters a request (or the bundle's generation_config) sets.

Its own module because both sides of the server consume it: serve/engine.py (each answer's token limit and
stop strings) and serve/batcher.py (each row's temperature, top-k, top-p and seed); the engine imports the
batcher, so the batcher cannot import the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatpipe.tasks.common.errors import InputError


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
