"""Tokenizer: a byte-level BPE trained with HF `tokenizers` on the ingested training documents, or a
pretrained checkpoint's tokenizer adopted as it is (`tokenizer.from: hf:<dir or hub id>`).

- Byte-level: every string round-trips (`decode(encode(x)) == x`); the chat markers and `<|endoftext|>` are
  special tokens, one id each, never split or merged. The held-out documents measure bytes per token per source.
- Adopted: our four markers (tasks/chat/format.py SPECIAL_TOKENS) are added where it lacks them, at the next
  free ids, recorded in `chat_markers.json` and the metrics (their embedding rows: tasks/train/pretrained.py).
  Why add rather than map our roles onto the checkpoint's chat template: every stage speaks one format
  (ingest's grammar, the loss masks, the gate's and eval's turn checks, the server's prompts and stops),
  and a mapping would fork each of them per model family.
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

from chatpipe.tasks.chat.format import HF_SPECIAL_TOKENS, SPECIAL_TOKENS
from chatpipe.tasks.chat.formats import FILE as FORMAT_FILE
from chatpipe.tasks.chat.formats import template_record
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import Params, params_dict
from chatpipe.tasks.common.documents import fingerprint, is_val, iter_batches, val_rows
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.tokens.artifact import MARKERS_FILE, file_hash, load  # noqa: F401 (load: read here by later stages)

HELDOUT_DOCS_PER_SOURCE = 500
log = logging.getLogger("chatpipe.tokenizer")


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


def adopt(spec: str, add_markers: bool = True) -> tuple[Tokenizer, dict]:
    """A checkpoint's tokenizer (hf: its tokenizer.json, gguf: transformers' conversion of the file's; model/
    checkpoints.py), with our special tokens added where it has no id for them unless `add_markers` is False;
    the record: from, source_sha256 (of the file read), added ({token: id}), chat_template (or None) and special
    (its bos/eos/pad/unk_token strings, None where unset)."""
    from chatpipe.model import checkpoints
    from chatpipe.model.hf import SPECIAL

    try:
        checkpoints.resolve(spec)
    except ValueError as e:
        raise ConfigError(f"params: tokenizer.from: {e}") from None
    try:
        tok, info = checkpoints.read_tokenizer(spec)
    except ValueError as e:
        raise InputError(f"tokenizer.from={spec}: {e}") from None
    had = {t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None}
    if add_markers:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok, {"from": spec, "source_sha256": sha256_file(info["file"]),
                 "added": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS if add_markers and t not in had},
                 "chat_template": info["chat_template"],
                 "special": {name: info[name] for name in SPECIAL}}


def train(params: Params, layout: Layout) -> tuple[Tokenizer, int]:
    """A byte-level BPE trained on the train split; the number of documents it saw."""
    cfg = params.tokenizer
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
    return tok, n


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg, timer = params.tokenizer, Timer()
    if cfg.from_:
        (tok, markers), n = adopt(cfg.from_, add_markers=params.chat.format == "ours"), 0
    else:
        (tok, n), markers = train(params, layout), None
    chat = (template_record(markers["chat_template"], markers["special"], tok, cfg.from_)
            if params.chat.format == "model" else {"format": "ours"})
    heldout = bytes_per_token(tok, layout.documents, params.shard.val_fraction)
    if lossy := sorted(src for src, s in heldout.items() if not s["round_trip"]):
        if not markers:
            raise RuntimeError("tokenizer does not round-trip held-out documents")  # a bug, not user input
        log.warning("%s's tokenizer does not round-trip held-out %s documents (its normalizer changes text)",
                    cfg.from_, ", ".join(lossy))
    with atomic.atomic_dir(layout.tokenizer) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        atomic.write_json(tmp / FORMAT_FILE, chat)
        atomic.write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", **(chat.get("special") or HF_SPECIAL_TOKENS),
            **({"chat_template": chat["chat_template"]} if "chat_template" in chat else {}),
            "clean_up_tokenization_spaces": False, "model_max_length": params.model.block_size})
        if markers:
            atomic.write_json(tmp / MARKERS_FILE, markers)
    sha = file_hash(layout.tokenizer)
    metrics = {"vocab_size": tok.get_vocab_size(), "requested_vocab_size": None if markers else cfg.vocab_size,
               "training_documents": n, "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
               "chat_format": chat["format"],
               **({"from": markers["from"], "added_tokens": markers["added"]} if markers else {}),
               "heldout": heldout, "sha256": sha, "documents_fingerprint": fingerprint(layout.documents),
               "seconds": timer.seconds}
    bpt = ", ".join(f"{s} {v['bytes_per_token']:.2f}" for s, v in heldout.items())
    what = f"byte-level BPE, {tok.get_vocab_size():,} tokens from {n:,} documents"
    if markers:
        what = f"{cfg.from_}'s, {tok.get_vocab_size():,} tokens, " + (
            f"{len(markers['added'])} chat markers added" if chat["format"] == "ours"
            else f"its own chat template (an answer ends on {chat['end_of_turn']})")
    summary = (f"tokenizer: {what}; held-out bytes/token: {bpt or 'n/a'} → "
               f"{os.path.relpath(layout.tokenizer)}/tokenizer.json [{timer.seconds:.1f}s]")
    return finish(layout, "tokenizer", summary, metrics, [layout.tokenizer],
                  params.tracking, {"tokenizer": params_dict(params)["tokenizer"]})

