"""Deterministic generator of small, tested Python functions (synthetic code data).

Why: the model's code seed trains on small functions with a docstring (`Sample.code`, the text kept) and
assert-based tests (`Sample.tests`). Each sample is kept only if its tests pass in tasks.common.sandbox,
and the tests' expected values come from a reference implementation evaluated at generation time, never
from the generated code, so a wrong function fails.

- Variety on purpose (names, constants, operations, loop / comprehension / builtin / recursion style,
  annotations, docstring wording), so near-duplicate removal keeps most samples.
- Determinism: the same `(n, seed, families)` gives the same samples (`random.Random` seeded per sample
  from a string, independent of PYTHONHASHSEED). Ops are picked by index, so editing a family's ops
  changes that family's samples for every seed.
- Layout: `draft` holds `Sample`, `FAMILIES` and the shared machinery (`_Draft`, the `_op` registry,
  rendering, vocabularies); one module per family (`arithmetic`, `strings`, `lists`, `dicts`,
  `recursion`, `sorting`, `maths` = the "math" family, `conditionals`), whose ops register on import.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

# The family modules register their ops in ``draft._OPS`` when imported.
from chatpipe.tasks.ingest.synthetic import (  # noqa: F401
    arithmetic,
    conditionals,
    dicts,
    lists,
    maths,
    recursion,
    sorting,
    strings,
)
from chatpipe.tasks.ingest.synthetic.draft import _OPS, FAMILIES, Sample, _sample

__all__ = ["FAMILIES", "Sample", "generate"]


def generate(n: int, seed: int | str, families: Sequence[str] = FAMILIES) -> Iterator[Sample]:
    """Yield ``n`` samples, cycling through ``families``; deterministic in its arguments."""
    families = tuple(families)
    unknown = [f for f in families if f not in _OPS]
    if unknown:
        raise ValueError(f"unknown synthetic famil{'ies' if len(unknown) > 1 else 'y'}: "
                         f"{', '.join(map(repr, unknown))} (known: {', '.join(FAMILIES)})")
    if not families and n > 0:
        raise ValueError("no families to generate from")
    return (_sample(families[i % len(families)], random.Random(f"{seed}:{i}"))
            for i in range(n))
