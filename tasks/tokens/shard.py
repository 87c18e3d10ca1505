"""Shard: documents → flat token streams in Arrow IPC files, the training data format.

- Layout: per split (`train`, `val`, by document id), a stream of token ids, each document followed by
  the separator, cut into shards of `shard.shard_tokens`: a `tokens` column (uint16; uint32 past 65,536
  ids) and a uint8 `loss_weight` column in one record batch, which tasks/tokens/reader.py memory-maps.
  `manifest.json` lists each shard's sha256 and the tokenizer's hash.
- Speed: tokenizing runs on all cores inside `tokenizers`; the next batch is encoded while this one is written.
- Loss weights (what chat fine-tuning trains on): a chat document (its source's kind, `CHAT_KINDS`) is
  rendered and weighed by the run's chat format (tasks/chat/formats.py): 1 on the assistant's answers and
  what ends them (so the model learns to answer and to stop), 0 on system and user turns; 1 on code and
  plain text. Each document is followed by the format's separator (`<|endoftext|>` where the tokenizer has it).
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

from chatpipe.tasks.chat import formats
from chatpipe.tasks.chat.format import CHAT_KINDS
from chatpipe.tasks.chat.formats import Encoded
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
    kinds = {name: s["kind"] for name, s in load_manifest(layout.documents)["sources"].items()}
    chat = Chat(formats.load(layout.tokenizer, tok), kinds)
    eot = chat.format.eot
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32)

    def encode(batch: pa.RecordBatch):
        return batch, chat.encode(batch)

    columns = ("id", "source", "text", "meta") if "hf" in kinds.values() else ("id", "source", "text")
    with atomic.atomic_dir(layout.shards) as tmp:
        streams = Streams(tmp, dtype, cfg.shard_tokens, eot, cfg.val_fraction, chat)
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
    """Which documents are conversations (by their source's kind), encoded in the run's chat format."""

    def __init__(self, format, kinds: dict[str, str]) -> None:
        self.format, self.kinds = format, kinds

    def is_chat(self, source: str, meta: str | None) -> bool:
        kind = self.kinds[source]
        return kind in CHAT_KINDS or (kind == "hf" and "turns" in json.loads(meta or "{}"))

    def encode(self, batch: pa.RecordBatch, offsets: bool = False) -> list[Encoded]:
        """A batch of documents as the model sees them: ids (separator last), loss weights."""
        metas = batch.column("meta").to_pylist() if "meta" in batch.schema.names else [None] * batch.num_rows
        chat = [self.is_chat(src, meta) for src, meta in zip(batch.column("source").to_pylist(), metas)]
        return self.format.encode(batch.column("text").to_pylist(), chat, offsets)

    def check(self, source: str, did: str, doc: Encoded, chat: bool) -> None:
        """A conversation opens with a turn and ends on a supervised answer: the model must learn to stop."""
        if chat and not self.format.ends_on_answer(doc):
            raise InputError(f"document {did} of source {source!r} (kind {self.kinds[source]}) is not a "
                             f"conversation ending in an assistant turn; rerun `chatpipe ingest`")


class Streams:
    """Routes each encoded document (separator last) and its loss weights to its split's writer, counting."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, eot: int, val_fraction: float,
                 chat: Chat):
        self.writers = {s: ShardWriter(directory / s, s, dtype, shard_tokens, eot) for s in SPLITS}
        self.dtype, self.eot, self.val_fraction, self.chat = dtype, eot, val_fraction, chat
        self.counts: dict[tuple[str, str], Counter] = {}
        self.chat_tokens = Counter()

    def add(self, batch: pa.RecordBatch, encoded: list[Encoded]) -> None:
        tokens: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        weights: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        metas = batch.column("meta").to_pylist() if "meta" in batch.schema.names else [None] * batch.num_rows
        for did, src, text, doc, meta in zip(batch.column("id").to_pylist(), batch.column("source").to_pylist(),
                                             batch.column("text").to_pylist(), encoded, metas):
            split = "val" if is_val(did, self.val_fraction) else "train"
            chat = self.chat.is_chat(src, meta)
            self.chat.check(src, did, doc, chat)
            tokens[split].append(doc.ids)
            weights[split].append(doc.weights)
            self.chat_tokens[split] += len(doc.ids) if chat else 0
            self.counts.setdefault((src, split), Counter()).update(
                documents=1, tokens=len(doc.ids), bytes=len(text.encode("utf-8")))
        for split in SPLITS:
            if tokens[split]:
                self.writers[split].add(np.concatenate(tokens[split]).astype(self.dtype),
                                        np.concatenate(weights[split]).astype(np.uint8))

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
