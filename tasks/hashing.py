"""Content hashes of files: shard checksums in the manifest, checkpoint checksums, cache keys."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, h=None) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks (or fed into the given hash object)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
