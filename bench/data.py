"""Benchmark: our tokenize+shard stage against a plain `Tokenizer.encode_batch` loop, same run, same text.

The peer is the simplest thing anyone would write: the documents' texts already in memory, encoded in
batches with HF tokenizers' `encode_batch` (Rust, all cores) into a Python list of id lists. Ours is the
whole `chatpipe shard` stage: it reads the Parquet documents, encodes, splits train/val, writes Arrow
shards and hashes them. Both run `--repeats` times, interleaved; we report the median MB/s of UTF-8
text and the ratio ours/peer (target ≥ 0.8).

    python bench/data.py            # builds the built-in corpus (tiny overlay) in a temp dir first
    python bench/data.py --root .   # or uses an existing project's documents and tokenizer
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks import ingest, shard, tokenizer  # noqa: E402
from tasks.config import PROJECT_ROOT, load_params  # noqa: E402
from tasks.documents import iter_batches  # noqa: E402
from tasks.stage import Layout  # noqa: E402


def peer(tok: tokenizers.Tokenizer, texts: list[str], batch: int) -> list:
    out = []
    for i in range(0, len(texts), batch):
        out.append([e.ids for e in tok.encode_batch(texts[i:i + batch], add_special_tokens=False)])
    return out


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="project dir with data/documents and artifacts/tokenizer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results")
    args = ap.parse_args()
    params = load_params([PROJECT_ROOT / "configs" / "tiny.yaml"], base=PROJECT_ROOT / "params.yaml")

    root = args.root or Path(tempfile.mkdtemp(prefix="bench-data-"))
    with contextlib.chdir(root):
        layout = Layout(root)
        if not args.root:
            (root / "data").mkdir()
            shutil.copy(PROJECT_ROOT / "data" / "chat_combined.txt", root / "data")
            print(ingest.run(params, layout).summary)
            print(tokenizer.run(params, layout).summary)
        tok = tokenizer.load(layout.tokenizer)
        texts = [t for b in iter_batches(layout.documents, columns=("text",)) for t in b.column(0).to_pylist()]
        mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
        ours_s, peer_s = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            peer(tok, texts, params.shard.batch_docs)
            peer_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            shard.run(params, layout)
            ours_s.append(time.perf_counter() - t)
    if not args.root:
        shutil.rmtree(root)

    ours, theirs = mb / statistics.median(ours_s), mb / statistics.median(peer_s)
    result = {
        "benchmark": "tokenize+shard", "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "tokenizers": tokenizers.__version__},
        "corpus": {"documents": len(texts), "mb_utf8": round(mb, 2), "params": "configs/tiny.yaml"},
        "ours": {"what": "chatpipe shard (read Parquet, encode, split, write Arrow, sha256)",
                 "seconds": [round(s, 3) for s in ours_s], "mb_per_s": round(ours, 2)},
        "peer": {"what": "loop of Tokenizer.encode_batch into a Python list (texts in memory)",
                 "seconds": [round(s, 3) for s in peer_s], "mb_per_s": round(theirs, 2)},
        "ratio_ours_over_peer": round(ours / theirs, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{result['date']}-data.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| tokenize+shard, {mb:.1f} MB built-in corpus | {ours:.2f} MB/s | encode_batch loop "
          f"{theirs:.2f} MB/s | {ours / theirs:.2f}× |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
