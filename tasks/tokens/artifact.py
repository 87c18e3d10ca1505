"""The tokenizer the tokenizer stage wrote (artifacts/tokenizer/), as later stages read it.

Apart from tasks/tokens/tokenizer.py so that reading it does not import what making it needs: adopting a
pretrained checkpoint's tokenizer resolves `hf:<...>` with model/hf.py, and the shard and pack stages,
whose caches hold their code, must not re-run when the model's code changes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer

from chatpipe.tasks.chat.formats import FILE as FORMAT_FILE
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.hashing import sha256_file

MARKERS_FILE = "chat_markers.json"  # an adopted tokenizer's source and the chat markers added to it


def load(tokenizer_dir: Path) -> Tokenizer:
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.exists():
        raise InputError(f"{path}: no tokenizer; run `chatpipe tokenizer` first")
    return Tokenizer.from_file(str(path))


def file_hash(tokenizer_dir: Path) -> str:
    """The tokenizer's identity: its tokenizer.json and the chat format recorded beside it."""
    h = hashlib.sha256()
    for name in ("tokenizer.json", FORMAT_FILE):
        if (Path(tokenizer_dir) / name).exists():
            sha256_file(Path(tokenizer_dir) / name, h)
    return h.hexdigest()


def chat_markers(tokenizer_dir: Path) -> dict | None:
    """What adopting a checkpoint's tokenizer recorded (`from`, `source_sha256`, `added`: {token: id});
    None for a tokenizer trained here."""
    path = Path(tokenizer_dir) / MARKERS_FILE
    return json.loads(path.read_text()) if path.exists() else None
