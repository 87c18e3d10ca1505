"""Shard: documents → flat token streams in Arrow IPC files, the training data format.

- Layout: per split (`train`, `val`, by document id), a stream of token ids, each document followed by
  `<|endoftext|>`, cut into shards of `shard.shard_tokens`: a `tokens` column (uint16; uint32 past 65,536
  ids) and a uint8 `loss_weight` column in one record batch, which tasks/tokens/reader.py memory-maps.
  `manifest.json` lists each shard's sha256 and the tokenizer's hash.
- Speed: tokenizing runs on all cores inside `tokenizers`; the next batch is encoded while this one is written.
- Loss weights (what chat fine-tuning trains on): in a chat document (its source's kind, `CHAT_KINDS`) 1 on
  the assistant's text and the marker that ends its turn (so the model learns to answer and to stop), 0 on
  system and user text and on the markers that open a turn; 1 on code and plain text. Computed from the ids
  alone: a token's role is the last marker before it (markers are single ids ingest keeps out of turn text).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from chatpipe.tasks.chat.format import CHAT_KINDS, EOT, MARKERS
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import Params, params_dict
from chatpipe.tasks.common.documents import fingerprint, is_val, iter_batches, load_manifest
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.tokens.artifact import file_hash, load
from chatpipe.tasks.tokens.reader import COLUMNS, SHARD_FORMAT

SPLITS = ("train", "val")


def loss_weights(ids: np.ndarray, chat: np.ndarray, assistant: int, markers: np.ndarray) -> np.ndarray:
    """Per-token loss weights (uint8) of a stream of documents, each followed by <|endoftext|>.

    `chat[t]` says whether token t belongs to a chat document (its closing <|endoftext|> included);
    `markers` are the ids of every turn marker and <|endoftext|>. In chat, a token's role is the last
    marker at or before it; a text token weighs 1 in an assistant turn, a marker weighs 1 when it closes
    an assistant turn (so `<|assistant|>` itself, and markers after user or system text, weigh 0).
    """
    is_marker = np.isin(ids, markers)
    last = np.maximum.accumulate(np.where(is_marker, np.arange(len(ids)), -1))
    in_answer = (last >= 0) & (ids[np.maximum(last, 0)] == assistant)  # role of token t is the assistant's
    closes_answer = np.concatenate([[False], in_answer[:-1]])           # ... of token t-1
    return np.where(chat, np.where(is_marker, closes_answer, in_answer), True).astype(np.uint8)


class ShardWriter:
    """Collects one split's token stream and loss weights and writes them as fixed-size Arrow shards."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, eot: int) -> None:
        self.dir, self.split, self.dtype, self.shard_tokens, self.eot = directory, split, dtype, shard_tokens, eot
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_tokens = 0
        self.shards: list[dict] = []

    def add(self, tokens: np.ndarray, weights: np.ndarray) -> None:
        self.pending.append((tokens, weights))
        self.pending_tokens += len(tokens)
        while self.pending_tokens >= self.shard_tokens:
            tokens, weights = self._flat()
            self._write(tokens[: self.shard_tokens], weights[: self.shard_tokens])
            self.pending = [(tokens[self.shard_tokens:], weights[self.shard_tokens:])]
            self.pending_tokens = len(tokens) - self.shard_tokens

    def close(self) -> None:
        if self.pending_tokens:
            self._write(*self._flat())
        self.pending, self.pending_tokens = [], 0

    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.concatenate(column) for column in zip(*self.pending))

    def _write(self, tokens: np.ndarray, weights: np.ndarray) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        digest = write_shard(self.dir / name, tokens.astype(self.dtype, copy=False), weights.astype(np.uint8, copy=False))
        self.shards.append({"path": f"{self.split}/{name}", "tokens": len(tokens),
                            "documents": int(np.count_nonzero(tokens == self.eot)),
                            "supervised_tokens": int(np.count_nonzero(weights)), "sha256": digest})


def write_shard(path: Path, tokens: np.ndarray, weights: np.ndarray) -> str:
    """One shard file: a single record batch of `tokens` and `loss_weight`, typed as the arrays are; its sha256."""
    batch = pa.record_batch([pa.array(tokens), pa.array(weights)], names=list(COLUMNS))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    return sha256_file(path)


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg, timer = params.shard, Timer()
    if cfg.threads:
        os.environ["RAYON_NUM_THREADS"] = str(cfg.threads)  # read when tokenizers starts its pool
    tok = load(layout.tokenizer)
    eot = tok.token_to_id(EOT)
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32)

    def encode(batch: pa.RecordBatch):
        texts = batch.column("text").to_pylist()
        return batch, texts, tok.encode_batch_fast(texts, add_special_tokens=False)

    kinds = {name: s["kind"] for name, s in load_manifest(layout.documents)["sources"].items()}
    columns = ("id", "source", "text", "meta") if "hf" in kinds.values() else ("id", "source", "text")
    with atomic.atomic_dir(layout.shards) as tmp:
        streams = Streams(tmp, dtype, cfg.shard_tokens, eot, cfg.val_fraction, Chat(tok, kinds))
        bar = tqdm(total=load_manifest(layout.documents)["totals"]["documents"], desc="shard: tokenizing",
                   unit="doc", leave=False, mininterval=1.0)
        with bar, ThreadPoolExecutor(1) as pool:  # encode batch i+1 (GIL released) while writing batch i
            pending = None
            for batch in iter_batches(layout.documents, columns, batch_rows=cfg.batch_docs):
                ready, pending = pending, pool.submit(encode, batch)
                if ready:
                    streams.add(*ready.result())
                    bar.update(ready.result()[0].num_rows)
            if pending:
                streams.add(*pending.result())
        splits = streams.close(layout.documents)
        sources = streams.per_source()
        manifest = {"stage": "shard", "format": SHARD_FORMAT, "tokenizer_sha256": file_hash(layout.tokenizer),
                    "documents_fingerprint": fingerprint(layout.documents),
                    "vocab_size": tok.get_vocab_size(), "dtype": dtype.name, "eot_id": eot,
                    "val_fraction": cfg.val_fraction, "splits": splits, "sources": sources}
        atomic.write_json(tmp / "manifest.json", manifest)
    total_bytes = sum(s["train_bytes"] + s["val_bytes"] for s in sources.values())
    metrics = {"train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
               **{f"{s}_{k}": splits[s][k] for s in SPLITS for k in ("chat_tokens", "supervised_tokens")},
               "train_documents": splits["train"]["documents"], "val_documents": splits["val"]["documents"],
               "shards": sum(len(s["shards"]) for s in splits.values()), "text_bytes": total_bytes,
               "seconds": timer.seconds, "mb_per_s": round(total_bytes / 1e6 / max(timer.seconds, 1e-9), 2),
               "sources": sources}
    summary = (f"shard: {splits['train']['tokens']:,} train + {splits['val']['tokens']:,} val tokens "
               f"({dtype.name}) in {metrics['shards']} shards, {metrics['mb_per_s']} MB/s of text "
               f"→ {os.path.relpath(layout.shards)} [{timer.seconds:.1f}s]")
    return finish(layout, "shard", summary, metrics, [layout.shards],
                  params.tracking, {"shard": params_dict(params)["shard"]})


class Chat:
    """Which documents are conversations (by their source's kind), and the marker ids their weights need."""

    def __init__(self, tok, kinds: dict[str, str]) -> None:
        self.kinds = kinds
        ids = {m: tok.token_to_id(m) for m in (*MARKERS, EOT)}
        if None in ids.values():
            raise InputError(f"the tokenizer lacks the chat markers {[m for m, i in ids.items() if i is None]}; "
                             f"rerun `chatpipe tokenizer`")
        self.assistant = ids["<|assistant|>"]
        self.markers = np.array(list(ids.values()))
        self.openers = np.array([ids["<|system|>"], ids["<|user|>"]])

    def weights(self, tokens: np.ndarray) -> np.ndarray:
        """The loss weights of one conversation's tokens (uint8)."""
        return loss_weights(tokens, np.ones(len(tokens), dtype=bool), self.assistant, self.markers)

    def is_chat(self, source: str, meta: str | None) -> bool:
        kind = self.kinds[source]
        return kind in CHAT_KINDS or (kind == "hf" and "turns" in json.loads(meta or "{}"))

    def check(self, tokens: np.ndarray, weights: np.ndarray, lengths: np.ndarray, docs: list) -> None:
        """Every conversation opens with a turn and its closing <|endoftext|> is supervised (it ends on
        an answer): the model must learn to stop. `docs` is (source, id, chat, length) per document."""
        ends = np.cumsum(lengths) - 1
        broken = (weights[ends] == 0) | ~np.isin(tokens[ends - lengths + 1], self.openers)
        for (source, did, chat, _), bad in zip(docs, broken.tolist()):
            if chat and bad:
                raise InputError(f"document {did} of source {source!r} (kind {self.kinds[source]}) is not a "
                                 f"conversation ending in an assistant turn; rerun `chatpipe ingest`")


class Streams:
    """Routes each encoded document (+ <|endoftext|>) and its loss weights to its split's writer, counting."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, eot: int, val_fraction: float,
                 chat: Chat):
        self.writers = {s: ShardWriter(directory / s, s, dtype, shard_tokens, eot) for s in SPLITS}
        self.dtype, self.eot, self.val_fraction, self.chat = dtype, eot, val_fraction, chat
        self.counts: dict[tuple[str, str], Counter] = {}
        self.chat_tokens = Counter()

    def add(self, batch: pa.RecordBatch, texts: list[str], encodings: list) -> None:
        flat: dict[str, list[int]] = {s: [] for s in SPLITS}
        docs: dict[str, list[tuple[str, str, bool, int]]] = {s: [] for s in SPLITS}  # source, id, chat, length
        metas = batch.column("meta").to_pylist() if "meta" in batch.schema.names else [None] * batch.num_rows
        for did, src, text, enc, meta in zip(batch.column("id").to_pylist(), batch.column("source").to_pylist(),
                                             texts, encodings, metas):
            split = "val" if is_val(did, self.val_fraction) else "train"
            ids = enc.ids
            flat[split] += ids
            flat[split].append(self.eot)
            docs[split].append((src, did, self.chat.is_chat(src, meta), len(ids) + 1))
            self.counts.setdefault((src, split), Counter()).update(
                documents=1, tokens=len(ids) + 1, bytes=len(text.encode("utf-8")))
        for split, ids in flat.items():
            if ids:
                self._add(split, np.array(ids, dtype=self.dtype), docs[split])

    def _add(self, split: str, tokens: np.ndarray, docs: list[tuple[str, str, bool, int]]) -> None:
        lengths = np.array([n for *_, n in docs])  # not cut at <|endoftext|>: code may hold one in its text
        chat = np.repeat(np.array([c for _, _, c, _ in docs]), lengths)
        weights = loss_weights(tokens, chat, self.chat.assistant, self.chat.markers)
        self.chat.check(tokens, weights, lengths, docs)
        self.chat_tokens[split] += int(np.count_nonzero(chat))
        self.writers[split].add(tokens, weights)

    def close(self, documents: Path) -> dict:
        for w in self.writers.values():
            w.close()
        for split, w in self.writers.items():
            if not w.shards:
                n = sum(c["documents"] for c in self.counts.values())
                raise InputError(f"{documents}: the {split} split is empty ({n} documents, val_fraction="
                                 f"{self.val_fraction}); add documents or change shard.val_fraction")
        return {s: {"tokens": sum(x["tokens"] for x in w.shards),
                    "documents": sum(x["documents"] for x in w.shards), "chat_tokens": self.chat_tokens[s],
                    "supervised_tokens": sum(x["supervised_tokens"] for x in w.shards), "shards": w.shards}
                for s, w in self.writers.items()}

    def per_source(self) -> dict[str, dict]:
        keys = ("documents", "tokens", "bytes")
        out: dict[str, dict] = {}
        for (src, split), c in sorted(self.counts.items()):
            row = out.setdefault(src, {f"{s}_{k}": 0 for s in SPLITS for k in keys})
            row.update({f"{split}_{k}": c[k] for k in keys})
        return out
