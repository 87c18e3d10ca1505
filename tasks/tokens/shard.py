"""Shard: documents → flat token streams in Arrow IPC files, the training data format.

Each split (`train`, `val`, by document id) is a stream of token ids, every document followed by
`<|endoftext|>`, cut into shards of `shard.shard_tokens` tokens: one uint16 column (uint32 once the
vocab passes 65,536) in a single record batch, so `tasks/tokens/reader.py` can memory-map it. Tokenizing runs
on all cores inside `tokenizers` (Rust threads); the next batch is encoded while this one is written.
`manifest.json` lists every shard with its sha256 and the tokenizer's hash.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from tasks.chat.format import EOT
from tasks.common import atomic
from tasks.common.config import Params, params_dict
from tasks.common.documents import fingerprint, is_val, iter_batches, load_manifest
from tasks.common.errors import InputError
from tasks.common.hashing import sha256_file
from tasks.common.layout import Layout
from tasks.common.stage import StageResult, Timer, finish
from tasks.tokens.tokenizer import file_hash, load

SPLITS = ("train", "val")


class ShardWriter:
    """Collects one split's token stream and writes it as fixed-size Arrow shards."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int, eot: int) -> None:
        self.dir, self.split, self.dtype, self.shard_tokens, self.eot = directory, split, dtype, shard_tokens, eot
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.shards: list[dict] = []

    def add(self, tokens: np.ndarray) -> None:
        self.pending.append(tokens)
        self.pending_tokens += len(tokens)
        while self.pending_tokens >= self.shard_tokens:
            flat = np.concatenate(self.pending)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens:]
            self.pending, self.pending_tokens = [rest], len(rest)

    def close(self) -> None:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        path = self.dir / name
        array = pa.array(tokens, type=pa.from_numpy_dtype(self.dtype))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("tokens", array.type)])) as w:
            w.write_batch(pa.record_batch([array], names=["tokens"]))
        self.shards.append({"path": f"{self.split}/{name}", "tokens": int(len(tokens)),
                            "documents": int(np.count_nonzero(tokens == self.eot)), "sha256": sha256_file(path)})


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

    with atomic.atomic_dir(layout.shards) as tmp:
        streams = Streams(tmp, dtype, cfg.shard_tokens, eot, cfg.val_fraction)
        bar = tqdm(total=load_manifest(layout.documents)["totals"]["documents"], desc="shard: tokenizing",
                   unit="doc", leave=False, mininterval=1.0)
        with bar, ThreadPoolExecutor(1) as pool:  # encode batch i+1 (GIL released) while writing batch i
            pending = None
            for batch in iter_batches(layout.documents, batch_rows=cfg.batch_docs):
                ready, pending = pending, pool.submit(encode, batch)
                if ready:
                    streams.add(*ready.result())
                    bar.update(ready.result()[0].num_rows)
            if pending:
                streams.add(*pending.result())
        splits = streams.close(layout.documents)
        sources = streams.per_source()
        manifest = {"stage": "shard", "tokenizer_sha256": file_hash(layout.tokenizer),
                    "documents_fingerprint": fingerprint(layout.documents),
                    "vocab_size": tok.get_vocab_size(), "dtype": dtype.name, "eot_id": eot,
                    "val_fraction": cfg.val_fraction, "splits": splits, "sources": sources}
        atomic.write_json(tmp / "manifest.json", manifest)
    total_bytes = sum(s["train_bytes"] + s["val_bytes"] for s in sources.values())
    metrics = {"train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
               "train_documents": splits["train"]["documents"], "val_documents": splits["val"]["documents"],
               "shards": sum(len(s["shards"]) for s in splits.values()), "text_bytes": total_bytes,
               "seconds": timer.seconds, "mb_per_s": round(total_bytes / 1e6 / max(timer.seconds, 1e-9), 2),
               "sources": sources}
    summary = (f"shard: {splits['train']['tokens']:,} train + {splits['val']['tokens']:,} val tokens "
               f"({dtype.name}) in {metrics['shards']} shards, {metrics['mb_per_s']} MB/s of text "
               f"→ {os.path.relpath(layout.shards)} [{timer.seconds:.1f}s]")
    return finish(layout, "shard", summary, metrics, [layout.shards],
                  params.tracking, {"shard": params_dict(params)["shard"]})


class Streams:
    """Routes each encoded document (+ <|endoftext|>) to its split's writer and counts per source."""

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, eot: int, val_fraction: float):
        self.writers = {s: ShardWriter(directory / s, s, dtype, shard_tokens, eot) for s in SPLITS}
        self.dtype, self.eot, self.val_fraction = dtype, eot, val_fraction
        self.counts: dict[tuple[str, str], Counter] = {}

    def add(self, batch: pa.RecordBatch, texts: list[str], encodings: list) -> None:
        flat: dict[str, list[int]] = {s: [] for s in SPLITS}
        for did, src, text, enc in zip(batch.column("id").to_pylist(), batch.column("source").to_pylist(),
                                       texts, encodings):
            split = "val" if is_val(did, self.val_fraction) else "train"
            ids = enc.ids
            flat[split] += ids
            flat[split].append(self.eot)
            self.counts.setdefault((src, split), Counter()).update(
                documents=1, tokens=len(ids) + 1, bytes=len(text.encode("utf-8")))
        for split, ids in flat.items():
            if ids:
                self.writers[split].add(np.array(ids, dtype=self.dtype))

    def close(self, documents: Path) -> dict:
        for w in self.writers.values():
            w.close()
        for split, w in self.writers.items():
            if not w.shards:
                n = sum(c["documents"] for c in self.counts.values())
                raise InputError(f"{documents}: the {split} split is empty ({n} documents, val_fraction="
                                 f"{self.val_fraction}); add documents or change shard.val_fraction")
        return {s: {"tokens": sum(x["tokens"] for x in w.shards),
                    "documents": sum(x["documents"] for x in w.shards), "shards": w.shards}
                for s, w in self.writers.items()}

    def per_source(self) -> dict[str, dict]:
        keys = ("documents", "tokens", "bytes")
        out: dict[str, dict] = {}
        for (src, split), c in sorted(self.counts.items()):
            row = out.setdefault(src, {f"{s}_{k}": 0 for s in SPLITS for k in keys})
            row.update({f"{split}_{k}": c[k] for k in keys})
        return out
