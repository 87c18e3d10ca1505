"""Any Hugging Face dataset (local files, or the hub when online) with a chat or a text column."""
from __future__ import annotations

from typing import Iterator

from chatpipe.tasks.chat.format import from_messages, reason, render
from chatpipe.tasks.common.config import HFSource
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.ingest.sources.base import Doc, Skips, reader
from chatpipe.tasks.ingest.sources.code import open_dataset


@reader("hf")
def read_hf(cfg: HFSource, skips: Skips) -> Iterator[Doc]:
    ds = open_dataset(f"hf source {cfg.path}", path=cfg.path, name=cfg.name, data_files=cfg.data_files,
                      data_dir=cfg.data_dir, split=cfg.split, streaming=cfg.streaming)
    for i, row in enumerate(ds):
        if cfg.max_documents and i >= cfg.max_documents:
            break
        where = f"{cfg.path}[{i}]"
        if cfg.messages_column in row:
            turns, error = from_messages(row[cfg.messages_column] or [])
            if error:
                skips.add(f"invalid_conversation: {reason(error)}", f"{where} ({error})")
                continue
            yield Doc(render(turns), {"row": i, "turns": len(turns)})
        elif cfg.text_column in row:
            text = row[cfg.text_column]
            if not isinstance(text, str) or not text.strip():
                skips.add("empty_text", where)
                continue
            yield Doc(text, {"row": i})
        else:
            raise InputError(f"{cfg.path}: has neither a {cfg.messages_column!r} nor a {cfg.text_column!r} "
                             f"column (columns: {', '.join(row)})")
