"""What each stage reads, taken from dvc.yaml, and the content hash that keys the flow's task cache.

dvc.yaml already declares every stage's inputs (deps) and the params it reads; the Prefect flow uses the
same declaration, so the two drivers cannot disagree about when a stage must re-run. A stage's cache key
is the sha256 of its name, the values of its params keys, and the content of every dep (files by their
bytes; directories by all their files except `manifest.json`, which holds timings). Code deps
(`tasks/...`, `model`) resolve against the project; data deps against the run's directory.
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import yaml

from tasks.config import PROJECT_ROOT, Params, params_dict
from tasks.hashing import sha256_file

DVC_FILE = PROJECT_ROOT / "dvc.yaml"
SKIP = {"manifest.json", "__pycache__", ".DS_Store"}


@lru_cache(maxsize=1)
def _stages() -> dict:
    return yaml.safe_load(DVC_FILE.read_text())["stages"]


def spec(stage: str) -> tuple[list[str], list[str]]:
    """(deps, params keys) of a stage in dvc.yaml."""
    s = _stages()[stage]
    keys = [p for p in s.get("params", []) if isinstance(p, str)]  # `${overlay}:` is already in the flow's params
    return list(s.get("deps", [])), keys


def outputs(stage: str, params: Params) -> list[str]:
    """The stage's outs and metrics, with `${key}` templates filled from params as DVC does."""
    s, values = _stages()[stage], params_dict(params)
    paths = [o if isinstance(o, str) else next(iter(o)) for o in s.get("outs", []) + s.get("metrics", [])]
    return [re.sub(r"\$\{([\w.]+)\}", lambda m: str(_lookup(values, m.group(1))), p) for p in paths]


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def _hash_path(h, path: Path) -> None:
    if path.is_file():
        h.update(path.name.encode())
        sha256_file(path, h)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not SKIP & set(child.relative_to(path).parts):
                h.update(str(child.relative_to(path)).encode())
                _hash_path(h, child)
    else:
        h.update(b"<missing>")


def resolve(dep: str, root: Path) -> Path:
    here = root / dep
    return here if here.exists() or not (PROJECT_ROOT / dep).exists() else PROJECT_ROOT / dep


def cache_key(stage: str, params: Params, root: Path) -> str:
    deps, keys = spec(stage)
    values = params_dict(params)
    h = hashlib.sha256(stage.encode())
    h.update(json.dumps({k: _lookup(values, k) for k in keys}, sort_keys=True).encode())
    for dep in deps:
        h.update(dep.encode())
        _hash_path(h, resolve(dep, root))
    return f"{stage}-{h.hexdigest()}"


def outputs_present(stage: str, params: Params, root: Path) -> bool:
    return all((root / out).exists() for out in outputs(stage, params))
