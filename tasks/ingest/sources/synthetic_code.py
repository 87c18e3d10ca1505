"""Synthetic code: generated functions with tests, kept only if their tests pass in the sandbox."""
from __future__ import annotations

from typing import Iterator

from tqdm import tqdm

from chatpipe.tasks.common import sandbox
from chatpipe.tasks.common.config import SyntheticCodeSource
from chatpipe.tasks.ingest import synthetic
from chatpipe.tasks.ingest.sources.base import Doc, Skips, reader

CHUNK = 500


@reader("synthetic_code")
def read_synthetic_code(cfg: SyntheticCodeSource, skips: Skips) -> Iterator[Doc]:
    families = tuple(cfg.families) if cfg.families else synthetic.FAMILIES
    samples = list(synthetic.generate(cfg.n, cfg.seed, families))
    with tqdm(total=len(samples), desc="synthetic code: running tests", unit="sample", leave=False) as bar:
        for start in range(0, len(samples), CHUNK):
            chunk = samples[start:start + CHUNK]
            outcomes = sandbox.run_many([s.program for s in chunk], timeout_s=cfg.timeout_s,
                                        memory_mb=cfg.memory_mb)
            for sample, outcome in zip(chunk, outcomes):
                if outcome.passed:
                    yield Doc(sample.program, {"family": sample.family, "function": sample.name,
                                               "seed": cfg.seed, "lang": "Python", "licenses": ["mit"]})
                else:
                    skips.add(f"tests_{outcome.status}", f"{sample.family}/{sample.name}: {outcome.detail}")
            bar.update(len(chunk))
