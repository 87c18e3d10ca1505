"""Where a published model came from: documents, tokenizer, shards, training runs and code.

Publishing writes this record into the bundle (`lineage.json`) and the model card, so a model found in a
bucket or the registry can be traced back to the data and the commit that made it. Every part is read
from the file a stage wrote (named under `from`), and a part whose file is absent is `None` rather than
a guess: a project whose documents were built elsewhere (e.g. shards pulled with `dvc pull`) still
publishes, saying what it does not know.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from chatpipe.tasks.common.config import PROJECT_ROOT
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.redact import public_url
from chatpipe.tasks.tokens.tokenizer import file_hash

TRAINING_KEYS = ("steps", "final_loss", "final_val_loss", "min_loss", "seconds", "mlflow_run_id")


def git_commit(repo: Path = PROJECT_ROOT) -> str | None:
    """The code's commit (suffixed -dirty with uncommitted changes), or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except OSError:
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def relative(path: Path | str, root: Path) -> str:
    """`path` relative to the project root when it is inside it (symlinks are not followed)."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def documents(layout: Layout) -> dict | None:
    """Sources and document counts: the documents manifest, else ingest's metrics (the same numbers)."""
    for path in (layout.documents / "manifest.json", layout.metrics("ingest")):
        if (m := read_json(path)) and "sources" in m:
            configured = (m.get("params") or {}).get("sources", {})
            return {"from": relative(path, layout.root), "fingerprint": m.get("fingerprint"),
                    "documents": m.get("totals", {}).get("documents"),
                    "sources": {name: {"kind": s.get("kind"), "documents": s.get("kept"), "read": s.get("read"),
                                       **teacher(configured.get(name, {}))}
                                for name, s in m["sources"].items()}}
    return None


def teacher(source: dict) -> dict:
    """A distill source's teacher (model name and endpoint, no credentials); {} for other sources."""
    if source.get("kind") != "distill":
        return {}
    return {"teacher": source.get("model"), "teacher_url": public_url(source.get("base_url", ""))}


def shards(layout: Layout) -> dict | None:
    path = layout.shards / "manifest.json"
    if (m := read_json(path)) is None:
        return None
    splits = m.get("splits", {})
    return {"from": relative(path, layout.root), "manifest_sha256": sha256_file(path),
            "tokenizer_sha256": m.get("tokenizer_sha256"), "documents_fingerprint": m.get("documents_fingerprint"),
            "tokens": {name: split.get("tokens") for name, split in splits.items()},
            "shards": {s["path"]: s["sha256"] for split in splits.values() for s in split.get("shards", [])}}


def training(layout: Layout, state: dict) -> dict:
    """The checkpoint published (from its state.json), each training phase's summary metrics that led to
    it and, for a distilled student, its teacher."""
    runs = {}
    phases = ("pilot", "full", "distill") if state.get("phase") == "distill" else ("pilot", "full")
    for phase in phases:
        if (m := read_json(layout.metrics(phase))) is not None:
            runs[phase] = {k: m.get(k) for k in TRAINING_KEYS}
    inputs = state.get("inputs", {})
    out = {"checkpoint": relative(state["path"], layout.root), "phase": state.get("phase"),
           "step": state.get("step"), "data_sha256": inputs.get("data"), "recipe": inputs.get("recipe"),
           "runs": runs}
    if "base" in inputs:  # LoRA: the adapters, merged into these weights, were trained on this base
        out["lora"] = {**inputs["recipe"]["lora"], "base": inputs["base"]}
    if "teacher" in inputs:  # a distilled student: which checkpoint taught it, and how
        out["teacher"], out["distill"] = inputs["teacher"], inputs.get("distill")
    return out


def collect(layout: Layout, state: dict) -> dict:
    return {"documents": documents(layout),
            "tokenizer": {"sha256": file_hash(layout.tokenizer)},
            "shards": shards(layout),
            "training": training(layout, state),
            "git_commit": git_commit()}
