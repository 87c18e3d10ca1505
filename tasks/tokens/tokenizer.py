"""Tokenizer: a byte-level BPE trained with HF `tokenizers` on the ingested training documents.

Byte-level means every string round-trips (`decode(encode(x)) == x`); the chat markers and
`<|endoftext|>` are special tokens, so each is one id that is never split or merged. The held-out
(validation) documents measure bytes per token for each source.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pyarrow.compute as pc
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from tasks.chat.format import HF_SPECIAL_TOKENS, SPECIAL_TOKENS
from tasks.common import atomic
from tasks.common.config import Params, params_dict
from tasks.common.documents import fingerprint, is_val, iter_batches, val_rows
from tasks.common.errors import InputError
from tasks.common.hashing import sha256_file
from tasks.common.layout import Layout
from tasks.common.stage import StageResult, Timer, finish

HELDOUT_DOCS_PER_SOURCE = 500
log = logging.getLogger("chatpipe.tokenizer")


def load(tokenizer_dir: Path) -> Tokenizer:
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.exists():
        raise InputError(f"{path}: no tokenizer; run `chatpipe tokenizer` first")
    return Tokenizer.from_file(str(path))


def file_hash(tokenizer_dir: Path) -> str:
    return sha256_file(Path(tokenizer_dir) / "tokenizer.json")


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _training_texts(documents: Path, val_fraction: float, max_chars: int | None) -> tuple[Iterator[str], int]:
    """Train-split texts; with a cap, a deterministic sample by document id of about `max_chars`."""
    total = docs = 0
    for batch in iter_batches(documents, columns=("id", "text")):
        total += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
        docs += batch.num_rows
    keep = 1.0 if not max_chars or total <= max_chars else max_chars / total

    def texts() -> Iterator[str]:
        for batch in iter_batches(documents, columns=("id", "text")):
            for did, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                if not is_val(did, val_fraction) and (keep >= 1.0 or int(did[8:16], 16) < keep * 2**32):
                    yield text
    return texts(), int(docs * keep)


def bytes_per_token(tok: Tokenizer, documents: Path, val_fraction: float) -> dict[str, dict]:
    """Held-out bytes/token per source (higher = better compression), and the round-trip check."""
    texts: dict[str, list[str]] = defaultdict(list)
    for rows in val_rows(documents, val_fraction):
        for src, text in rows:
            if len(texts[src]) < HELDOUT_DOCS_PER_SOURCE:
                texts[src].append(text)
    out = {}
    for src, docs in sorted(texts.items()):
        encs = tok.encode_batch(docs, add_special_tokens=False)
        n_tokens = sum(len(e.ids) for e in encs)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        lossless = all(tok.decode(e.ids, skip_special_tokens=False) == d for e, d in zip(encs, docs))
        out[src] = {"documents": len(docs), "bytes": n_bytes, "tokens": n_tokens,
                    "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4), "round_trip": lossless}
    return out


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg, timer = params.tokenizer, Timer()
    texts, n = _training_texts(layout.documents, params.shard.val_fraction, cfg.max_train_chars)
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tqdm(texts, total=n, desc="tokenizer: training BPE", unit="doc", leave=False,
                                 mininterval=1.0), trainer, length=n)
    if tok.get_vocab_size() < cfg.vocab_size:
        log.warning(
            "corpus too small for vocab_size %d: learned %d tokens", cfg.vocab_size, tok.get_vocab_size())
    heldout = bytes_per_token(tok, layout.documents, params.shard.val_fraction)
    if not all(s["round_trip"] for s in heldout.values()):
        raise RuntimeError("tokenizer does not round-trip held-out documents")  # a bug, not user input
    with atomic.atomic_dir(layout.tokenizer) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        atomic.write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", **HF_SPECIAL_TOKENS, "clean_up_tokenization_spaces": False,
            "model_max_length": params.model.block_size})
    sha = file_hash(layout.tokenizer)
    metrics = {"vocab_size": tok.get_vocab_size(), "requested_vocab_size": cfg.vocab_size,
               "training_documents": n, "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
               "heldout": heldout, "sha256": sha, "documents_fingerprint": fingerprint(layout.documents),
               "seconds": timer.seconds}
    bpt = ", ".join(f"{s} {v['bytes_per_token']:.2f}" for s, v in heldout.items())
    summary = (f"tokenizer: byte-level BPE, {tok.get_vocab_size():,} tokens from {n:,} documents; held-out "
               f"bytes/token: {bpt or 'n/a'} → {os.path.relpath(layout.tokenizer)}/tokenizer.json "
               f"[{timer.seconds:.1f}s]")
    return finish(layout, "tokenizer", summary, metrics, [layout.tokenizer],
                  params.tracking, {"tokenizer": params_dict(params)["tokenizer"]})

