"""Deterministic generator of small, tested Python functions (synthetic code data).

The code seed of the model is trained on synthetic code: every sample is one small
function with a docstring (``Sample.code``, the text that is kept) plus assert-based
tests (``Sample.tests``).  Every sample is executed in ``tasks.common.sandbox`` and kept only
if its tests pass, so the expected values in the tests are computed here, by a
reference implementation known to the generator and evaluated on the test inputs at
generation time -- never by running the generated code.  A generated function that
is wrong therefore fails its tests.

Samples are varied on purpose (function, parameter and local names, constants,
operations, implementation style -- loop, comprehension, builtin, recursion --
annotations, docstring wording and layout) so that near-duplicate removal (MinHash,
Jaccard 0.8 over 5-token shingles) keeps most of them.  The same ``(n, seed,
families)`` always yields the same samples (``random.Random`` seeded per sample from
a string, independent of PYTHONHASHSEED).

Layout: ``draft`` holds ``Sample``, ``FAMILIES`` and the shared machinery (the ``_Draft``
an op returns, the ``_op`` registry, rendering, vocabularies); each family has a module
of its own -- ``arithmetic``, ``strings``, ``lists``, ``dicts``, ``recursion``, ``sorting``,
``maths`` (the ``"math"`` family) and ``conditionals`` -- whose ops register on import.
Ops are picked by index, so reordering, adding or removing ops in a module changes that
family's samples for every seed.
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
