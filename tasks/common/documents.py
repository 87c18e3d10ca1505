"""The documents dataset: the contract between ingest and everything after it.

`data/documents/<source>/part-NNNNN.parquet` with columns id (sha256 of text), source, text and meta
(JSON), plus `manifest.json` (counts, drop reasons, params, and a fingerprint of the content that later
stages record as their input hash). The train/val split is a pure function of the document id, so the
tokenizer's held-out set and the validation shards are the same documents on every run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from chatpipe.tasks.common.errors import InputError

SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.large_string()),
                    ("meta", pa.string())])


def is_val(doc_id: str, val_fraction: float) -> bool:
    return int(doc_id[:8], 16) < val_fraction * 0x1_0000_0000


class PartWriter:
    """Buffers one source's documents and writes them as numbered Parquet parts."""

    def __init__(self, directory: Path, source: str, part_docs: int) -> None:
        self.dir, self.source, self.part_docs = directory, source, part_docs
        self.rows: list[tuple[str, str, dict]] = []
        self.parts = 0
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, doc_id: str, text: str, meta: dict) -> None:
        self.rows.append((doc_id, text, meta))
        if len(self.rows) >= self.part_docs:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        ids, texts, metas = zip(*self.rows)
        table = pa.table([list(ids), [self.source] * len(ids), list(texts),
                          [json.dumps(m, sort_keys=True) for m in metas]], schema=SCHEMA)
        pq.write_table(table, self.dir / f"part-{self.parts:05d}.parquet", compression="zstd")
        self.parts += 1
        self.rows = []


def load_manifest(documents: Path) -> dict:
    path = documents / "manifest.json"
    if not path.exists():
        raise InputError(f"{documents}: no documents (manifest.json missing); run `chatpipe ingest` first")
    return json.loads(path.read_text())


def fingerprint(documents: Path) -> str:
    """sha256 over every kept document's source and id, in order: equal data, equal fingerprint."""
    return load_manifest(documents)["fingerprint"]


def parts(documents: Path) -> list[Path]:
    manifest = load_manifest(documents)
    return [documents / p for s in manifest["sources"].values() for p in s["parts"]]


def iter_batches(documents: Path, columns=("id", "source", "text"), batch_rows: int = 1024
                 ) -> Iterator[pa.RecordBatch]:
    """Record batches over every part, in manifest order (deterministic)."""
    for path in parts(documents):
        yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(columns))


def val_rows(documents: Path, val_fraction: float) -> Iterator[list[tuple[str, str]]]:
    """(source, text) of the validation documents, a list per record batch, in manifest order."""
    for batch in iter_batches(documents):
        ids, sources, texts = (batch.column(c).to_pylist() for c in ("id", "source", "text"))
        yield [(src, text) for did, src, text in zip(ids, sources, texts) if is_val(did, val_fraction)]
