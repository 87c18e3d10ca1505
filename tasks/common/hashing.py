"""Content hashes: shard checksums in the manifest, checkpoint checksums, cache keys of code and data."""
from __future__ import annotations

import hashlib
from pathlib import Path

SKIP = {"manifest.json", "__pycache__", ".DS_Store"}  # timings and caches, not content


def sha256_file(path: Path, h=None) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks (or fed into the given hash object)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def code_hash(folders: tuple[str, ...], root: Path) -> str:
    """One hash of the code in these project folders (a stage's `code` in the stage table)."""
    h = hashlib.sha256()
    for folder in folders:
        h.update(folder.encode())
        hash_tree(h, root / folder)
    return h.hexdigest()


def hash_tree(h, path: Path) -> None:
    """Feed a file (name and bytes) or a directory (every file but SKIP's, by relative path) into `h`; a
    missing path counts as `<missing>`."""
    path = Path(path)
    if path.is_file():
        h.update(path.name.encode())
        sha256_file(path, h)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not SKIP & set(child.relative_to(path).parts):
                h.update(str(child.relative_to(path)).encode())
                hash_tree(h, child)
    else:
        h.update(b"<missing>")
