"""The contract every ingest source keeps, and the registry that maps a `kind` to its reader.

A reader is `read(cfg, skips) -> Iterator[Doc]`: it yields documents and counts (never hides) what it
could not use. A new source is a new module with `@reader("kind")`, not a new branch in ingest.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from tasks.common.errors import InputError

log = logging.getLogger("chatpipe.ingest")


@dataclass
class Doc:
    text: str
    meta: dict = field(default_factory=dict)


class Skips:
    """Counted skips per reason, with the first few locations of each for the manifest."""
    EXAMPLES = 5

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict  # strict: a skip is an error instead
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, where: str = "") -> None:
        if self.strict:
            raise InputError(f"{where}: {reason}" if where else reason)
        self.counts[reason] += 1
        if where and len(self.examples[reason]) < self.EXAMPLES:
            self.examples[reason].append(where)
            log.warning("skipped %s: %s", where, reason)


Reader = Callable[..., Iterator[Doc]]
READERS: dict[str, Reader] = {}


def reader(kind: str) -> Callable[[Reader], Reader]:
    def register(fn: Reader) -> Reader:
        READERS[kind] = fn
        return fn
    return register
