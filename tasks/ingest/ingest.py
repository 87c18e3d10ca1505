"""Ingest: every enabled source → cleaned, deduplicated documents in Parquet.

Sources are read in params order through the reader registry (`tasks/ingest/sources`), cleaned by one shared
`Cleaner` (so dedup works across sources), and written per source under `data/documents/`. Every
document read is accounted for: kept, or dropped under a counted reason. Skips and drops go to the
manifest as counts; the log gets one line per source and skip reason, never one per record.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter

from tqdm import tqdm

from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import Params, params_dict
from chatpipe.tasks.common.documents import PartWriter
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.ingest.clean import Cleaner, doc_id
from chatpipe.tasks.ingest.sources import READERS, Skips

log = logging.getLogger("chatpipe.ingest")


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg = params.ingest
    enabled = {name: src for name, src in cfg.sources.items() if src.enabled}
    if not enabled:
        raise ConfigError("params: ingest.sources: no source is enabled")
    timer, cleaner, fingerprint = Timer(), Cleaner(cfg.clean), hashlib.sha256()
    per_source = {}
    with atomic.atomic_dir(layout.documents) as tmp:
        for name, src in enabled.items():
            skips, drops, chars = Skips(strict=cfg.strict), Counter(), 0
            writer = PartWriter(tmp / name, name, cfg.part_docs)
            read = 0
            for doc in tqdm(READERS[src.kind](src, skips), desc=f"ingest {name}", unit="doc", leave=False,
                            mininterval=1.0):
                read += 1
                did = doc_id(doc.text)
                reason = cleaner.check(doc.text, did, src.code, doc.meta.get("licenses"))
                if reason:
                    drops[reason] += 1
                    continue
                writer.add(did, doc.text, doc.meta)
                fingerprint.update(f"{name}/{did}\n".encode())
                chars += len(doc.text)
            writer.flush()
            for line in skips.summary(name):  # once per source and reason, never per skipped record
                log.warning(line)
            kept = read - sum(drops.values())
            per_source[name] = {
                "kind": src.kind, "read": read, "kept": kept, "chars": chars,
                "skipped": dict(skips.counts), "skip_examples": dict(skips.examples), "dropped": dict(drops),
                "parts": [f"{name}/part-{i:05d}.parquet" for i in range(writer.parts)],
            }
            log.info("%s: kept %d of %d documents", name, kept, read)
        totals = {
            "documents": sum(s["kept"] for s in per_source.values()),
            "read": sum(s["read"] for s in per_source.values()),
            "chars": sum(s["chars"] for s in per_source.values()),
            "skipped": sum(sum(s["skipped"].values()) for s in per_source.values()),
            "dropped": dict(sum((Counter(s["dropped"]) for s in per_source.values()), Counter())),
        }
        manifest = {"stage": "ingest", "fingerprint": fingerprint.hexdigest(), "totals": totals,
                    "sources": per_source,
                    "params": params_dict(params)["ingest"], "seconds": timer.seconds}
        atomic.write_json(tmp / "manifest.json", manifest)
    metrics = {k: v for k, v in manifest.items() if k != "params"}
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(totals["dropped"].items(), key=lambda kv: -kv[1]))
    summary = (f"ingest: {totals['documents']:,} documents ({totals['chars'] / 1e6:.1f}M chars) from "
               f"{len(per_source)} sources; read {totals['read']:,}, skipped {totals['skipped']:,}, "
               f"dropped {sum(totals['dropped'].values()):,}{f' ({dropped})' if dropped else ''} "
               f"→ {os.path.relpath(layout.documents)} [{timer.seconds:.1f}s]")
    return finish(layout, "ingest", summary, metrics, [layout.documents],
                  params.tracking, {"ingest": params_dict(params)["ingest"]})
