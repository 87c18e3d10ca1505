"""The flow's view of a stage: whether it is on, its content-hash cache key, whether its outputs exist, where
its result is kept.

A stage's key is the sha256 of its table entry (tasks/pipeline.py), the values of the params keys it
reads, its code folders and its inputs (files by their bytes; directories by all their files except
`manifest.json`, which holds timings). `dvc.yaml` is generated from the same entries, so the flow and
`dvc repro` re-run a stage for the same reasons. Code resolves against the project, data against the
run's directory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from chatpipe.tasks.common.config import PROJECT_ROOT, Params, params_dict
from chatpipe.tasks.common.hashing import code_hash, hash_tree
from chatpipe.tasks.pipeline import Stage
from chatpipe.tasks.publish.store import Store


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def enabled(stage: Stage, params: Params) -> bool:
    """Whether the params switch the stage on (its `enabled` key; a stage without one always runs)."""
    return not stage.enabled or bool(_lookup(params_dict(params), stage.enabled))


def cache_key(stage: Stage, params: Params, root: Path) -> str:
    values = params_dict(params)
    h = hashlib.sha256(repr(stage).encode())
    h.update(json.dumps({k: _lookup(values, k) for k in stage.params}, sort_keys=True).encode())
    h.update(code_hash(stage.code, PROJECT_ROOT).encode())
    for path in stage.inputs:
        h.update(path.encode())
        hash_tree(h, root / path)
    return f"{stage.name}-{h.hexdigest()}"


def result_storage(params: Params, root: Path) -> str:
    """Where Prefect persists the stages' results (and a dispatched phase's): `<store>/prefect-results`, as a
    filesystem block saved on the Prefect server under a name derived from that place; its slug. The flow's
    tasks and the workers' runs name it, so a retry or another machine reads what ran before."""
    store = Store(params.store.uri, root)
    store.check()
    block = store.result_block()
    name = "chatpipe-results-" + hashlib.sha256(block.basepath.encode()).hexdigest()[:16]
    block.save(name, overwrite=True)
    return f"{block.get_block_type_slug()}/{name}"


def outputs_present(stage: Stage, root: Path) -> bool:
    return all((root / p).exists() for p in (*(o.path for o in stage.outputs), stage.metrics))
