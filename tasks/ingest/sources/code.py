"""Code sources in The Stack's schema: The Stack itself (hub or local Parquet) and local source trees.

Both yield documents whose meta carries The Stack's provenance fields (lang, repo path, licenses), so
the license allow-list and the lineage work the same for either.
"""
from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

from chatpipe.tasks.common.config import LocalCodeSource, TheStackSource
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.ingest.sources.base import Doc, Skips, reader

STACK_COLUMNS = ("content", "lang", "max_stars_repo_licenses", "max_stars_repo_path")
LANGS = {".py": "Python", ".pyi": "Python", ".md": "Markdown", ".rs": "Rust", ".go": "Go",
         ".js": "JavaScript", ".ts": "TypeScript", ".c": "C", ".h": "C", ".cpp": "C++", ".java": "Java"}


def stack_doc(row: dict) -> Doc:
    return Doc(row["content"], {
        "lang": row.get("lang"),
        "path": row.get("max_stars_repo_path"),
        "repo": row.get("max_stars_repo_name"),
        "licenses": list(row.get("max_stars_repo_licenses") or []),
    })


def _parquet_files(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise InputError(f"{pattern}: no Parquet files match")
        files += found
    for f in files:
        _check_stack_schema(f)
    return files


def _check_stack_schema(path: str) -> None:
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for non-Parquet input
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    missing = [c for c in STACK_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: not The Stack's schema: missing column(s) {', '.join(missing)}")


def open_dataset(what: str, **kwargs):
    """`datasets.load_dataset(**kwargs)` with a one-line error instead of a traceback."""
    import datasets

    try:
        return datasets.load_dataset(**kwargs)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{what}: cannot open dataset {kwargs.get('path')!r}: {first}") from None


@reader("the_stack")
def read_the_stack(cfg: TheStackSource, skips: Skips) -> Iterator[Doc]:
    if cfg.parquet:
        kwargs = dict(path="parquet", data_files=_parquet_files(cfg.parquet))
    else:
        kwargs = dict(path=cfg.dataset, data_dir=cfg.data_dir)
    ds = open_dataset("the_stack", split="train", streaming=True, **kwargs)
    for i, row in enumerate(ds):
        if cfg.max_documents and i >= cfg.max_documents:
            break
        if not isinstance(row.get("content"), str) or not row["content"].strip():
            skips.add("empty_content", f"{row.get('max_stars_repo_path')}")
            continue
        yield stack_doc(row)


def _root(name: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) if name == "stdlib" else Path(name)


def _walk(root: Path, cfg: LocalCodeSource) -> Iterator[Path]:
    def fail(err: OSError):
        raise InputError(f"{err.filename}: cannot read directory ({err.strerror})")

    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if d not in cfg.exclude)
        for name in sorted(filenames):
            if os.path.splitext(name)[1] in cfg.extensions:
                yield Path(dirpath) / name


@reader("local_code")
def read_local_code(cfg: LocalCodeSource, skips: Skips) -> Iterator[Doc]:
    n = 0
    for name in cfg.roots:
        root = _root(name)
        repo = f"cpython-{sys.version_info.major}.{sys.version_info.minor}-stdlib" if name == "stdlib" else root.name
        for path in _walk(root, cfg):
            if cfg.max_files and n >= cfg.max_files:
                return
            rel = str(path.relative_to(root))
            try:
                content = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                skips.add("not_utf8", str(path))
                continue
            except OSError as e:
                skips.add("unreadable_file", f"{path} ({e.strerror})")
                continue
            n += 1
            yield stack_doc({"content": content, "lang": LANGS.get(path.suffix, path.suffix.lstrip(".")),
                             "max_stars_repo_path": rel, "max_stars_repo_name": repo,
                             "max_stars_repo_licenses": [cfg.license]})
