"""Benchmark: our tokenize+shard stage against a plain `Tokenizer.encode_batch` loop, same run, same text.

The peer is the simplest thing anyone would write: the documents' texts already in memory, encoded in
batches with HF tokenizers' `encode_batch` (Rust, all cores) into a Python list of id lists. Ours is the
whole `chatpipe shard` stage: it reads the Parquet documents, encodes, splits train/val, writes Arrow
shards and hashes them. Both run `--repeats` times, interleaved; we report the median MB/s of UTF-8
text and the ratio ours/peer (target ≥ 0.8). A second peer uses `encode_batch_fast`
(no offsets), which is what our stage calls, so the ratio against it isolates our own overhead.

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

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params  # noqa: E402
from chatpipe.tasks.common.documents import iter_batches  # noqa: E402
from chatpipe.tasks.common.layout import Layout  # noqa: E402
from chatpipe.tasks.ingest import ingest  # noqa: E402
from chatpipe.tasks.tokens import shard, tokenizer  # noqa: E402


def peer_loop(encode, texts: list[str], batch: int) -> list:
    out = []
    for i in range(0, len(texts), batch):
        out.append([e.ids for e in encode(texts[i:i + batch], add_special_tokens=False)])
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
        peers = {"encode_batch": tok.encode_batch, "encode_batch_fast": tok.encode_batch_fast}
        seconds: dict[str, list[float]] = {"ours": [], **{name: [] for name in peers}}
        for _ in range(args.repeats):
            for name, encode in peers.items():
                t = time.perf_counter()
                peer_loop(encode, texts, params.shard.batch_docs)
                seconds[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            shard.run(params, layout)
            seconds["ours"].append(time.perf_counter() - t)
    if not args.root:
        shutil.rmtree(root)

    rate = {name: mb / statistics.median(s) for name, s in seconds.items()}
    result = {
        "benchmark": "tokenize+shard", "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "tokenizers": tokenizers.__version__},
        "corpus": {"documents": len(texts), "mb_utf8": round(mb, 2), "params": "configs/tiny.yaml"},
        "ours": {"what": "chatpipe shard (read Parquet, encode, split, write Arrow, sha256)",
                 "seconds": [round(x, 3) for x in seconds["ours"]], "mb_per_s": round(rate["ours"], 2)},
        "peers": {name: {"what": f"loop of Tokenizer.{name} into a Python list (texts already in memory)",
                         "seconds": [round(x, 3) for x in seconds[name]], "mb_per_s": round(rate[name], 2),
                         "ratio_ours_over_peer": round(rate["ours"] / rate[name], 3)} for name in peers},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{result['date']}-data.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name in peers:
        print(f"| tokenize+shard, {mb:.1f} MB built-in corpus | {rate['ours']:.2f} MB/s | `{name}` loop "
              f"{rate[name]:.2f} MB/s | {rate['ours'] / rate[name]:.2f}× |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
