"""The contract every ingest source keeps, and the registry that maps a `kind` to its reader.

A reader is `read(cfg, skips) -> Iterator[Doc]`: it yields documents and counts (never hides) what it
could not use. A new source is a new module with `@reader("kind")`, not a new branch in ingest.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

from chatpipe.tasks.common.errors import InputError


@dataclass
class Doc:
    text: str
    meta: dict = field(default_factory=dict)


class Skips:
    """Counted skips per reason, with the first few locations of each for the manifest.

    Nothing is logged per skip: a real corpus skips tens of thousands of records, so a source's skips
    reach the log as `summary` lines, one per reason, once the source has been read.
    """
    EXAMPLES = 5  # locations kept per reason, for the manifest
    LOGGED = 3    # of those, shown in the summary line

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

    def summary(self, source: str) -> list[str]:
        """One line per reason, most frequent first: the count and the first few locations."""
        lines = []
        for reason, n in self.counts.most_common():
            shown = "; ".join(self.examples.get(reason, [])[:self.LOGGED])  # .get: no empty list in the manifest
            lines.append(f"{source}: skipped {n:,} [{reason}]" + (f", e.g. {shown}" if shown else ""))
        return lines


Reader = Callable[..., Iterator[Doc]]
READERS: dict[str, Reader] = {}


def reader(kind: str) -> Callable[[Reader], Reader]:
    def register(fn: Reader) -> Reader:
        READERS[kind] = fn
        return fn
    return register
