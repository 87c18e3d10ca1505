"""Pack: conversations → the rows chat fine-tuning trains on (the `sft` phase), whole conversations per row.

Why: a conversation cut at a row's edge teaches answers without their question. So each row of block_size
tokens holds whole conversations in the run's chat format (tasks/chat/formats.py), packed best-fit (into the
fullest row with room), padded with the format's separator at weight 0.

- Too long for a row: a conversation is split between exchanges (where a user turn starts; its first token
  also ends the piece before it), an exchange where its assistant turn starts; a turn longer than a row is counted and skipped, never
  cropped. A piece with no supervised token is counted and dropped.
- Weights: 1 on the assistant's text and the token ending its turn, `sft.prompt_loss_weight` on the rest of
  the conversation (0: the assistant only; 1: plain language modelling), 0 on a piece's first token (a turn's
  opening, which nothing in the row predicts) and on padding.
- Output: the shard format (tasks/tokens/shard.py) in data/sft/{train,val}/ with a manifest, read unchanged
  by the training reader (block i = row i plus row i + 1's first token as a last target of weight 0; one
  pad token ends each shard).
"""
from __future__ import annotations

import bisect
import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chatpipe.tasks.chat import formats
from chatpipe.tasks.chat.formats import Encoded
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.config import Params, params_dict
from chatpipe.tasks.common.documents import fingerprint, is_val, iter_batches, load_manifest
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.tokens.artifact import file_hash, load
from chatpipe.tasks.tokens.reader import SHARD_FORMAT
from chatpipe.tasks.tokens.shard import write_shard

SPLITS = ("train", "val")


PAD, PROMPT, SUPERVISED = 0, 1, 2  # what a position of a row is (its weight: 0, prompt_loss_weight, 1)


@dataclass
class Packed:
    """Rows of `row` tokens and what each position is (PAD / PROMPT / SUPERVISED), and what was split,
    skipped or dropped on the way."""
    tokens: list[np.ndarray] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def weights(self, prompt_loss_weight: float) -> list[np.ndarray]:
        table = np.array([0.0, prompt_loss_weight, 1.0], dtype=np.float32)
        return [table[c] for c in self.codes]


def _cuts(at: np.ndarray, start: int, end: int) -> list[int]:
    """start, every position of `at` strictly inside (start, end), end."""
    return [start, *at[(at > start) & (at < end)].tolist(), end]


def pieces(tokens: np.ndarray, row: int, starts: dict[str, np.ndarray], counts: Counter) -> list[tuple[int, int]]:
    """[a, b) ranges of one conversation, each at most `row` tokens, consecutive ones sharing the token
    between them (the first of the next turn); `starts`: where each user and assistant turn starts."""
    n = len(tokens)
    if n <= row:
        return [(0, n)]
    counts["conversations split"] += 1
    units: list[tuple[int, int] | None] = []  # None: a skipped turn breaks the chain
    exchanges = _cuts(starts["user"], 0, n - 1)
    for a, b in itertools.pairwise(exchanges):
        b = b + 1  # through the next marker (or the final <|endoftext|>)
        if b - a <= row:
            units.append((a, b))
            continue
        turns = _cuts(starts["assistant"], a, b - 1)
        for c, d in itertools.pairwise(turns):
            d = d + 1
            if d - c <= row:
                units.append((c, d))
            else:
                counts["turns longer than a row (skipped)"] += 1
                units.append(None)
    out, current = [], None
    for unit in units:
        if current and unit and unit[0] == current[1] - 1 and unit[1] - current[0] <= row:
            current = (current[0], unit[1])
            continue
        if current:
            out.append(current)
        current = unit
    if current:
        out.append(current)
    return out


def pack(conversations: list[Encoded], row: int, pad: int) -> Packed:
    """Conversations (tokens, weights, turn starts) → rows. Best-fit decreasing: the longest piece first, each
    into the row with the least room that fits it."""
    result, items = Packed(), []
    for doc in conversations:
        tokens, supervised = doc.ids, doc.weights > 0
        for a, b in pieces(tokens, row, doc.starts, result.counts):
            codes = np.where(supervised[a:b], SUPERVISED, PROMPT).astype(np.uint8)
            codes[0] = PAD  # an opening marker: nothing before it in the row predicts it
            if not (codes == SUPERVISED).any():
                result.counts["pieces without a supervised token (dropped)"] += 1
                continue
            items.append((tokens[a:b], codes))
    items.sort(key=lambda item: -len(item[0]))
    rows: list[list[int]] = []          # per row: indices into items
    room: list[tuple[int, int]] = []    # (tokens left, row index), sorted
    for i, (tokens, _) in enumerate(items):
        at = bisect.bisect_left(room, (len(tokens), -1))
        if at == len(room):
            rows.append([i])
            bisect.insort(room, (row - len(tokens), len(rows) - 1))
            continue
        left, r = room.pop(at)
        rows[r].append(i)
        bisect.insort(room, (left - len(tokens), r))
    for members in rows:
        tokens = np.concatenate([items[i][0] for i in members])
        codes = np.concatenate([items[i][1] for i in members])
        result.tokens.append(np.concatenate([tokens, np.full(row - len(tokens), pad, dtype=tokens.dtype)]))
        result.codes.append(np.concatenate([codes, np.full(row - len(codes), PAD, dtype=np.uint8)]))
    result.counts["rows"] = len(rows)
    result.counts["pieces"] = len(items)
    return result


def conversations(layout: Layout, params: Params, chat: formats.Ours | formats.Template) -> dict[str, list[Encoded]]:
    """Every document of sft.sources in the run's chat format (separator last, weights, turn starts), by split."""
    known = load_manifest(layout.documents)["sources"]
    if missing := [s for s in params.sft.sources if s not in known]:
        raise ConfigError(f"params: sft.sources: no documents from {', '.join(map(repr, missing))} "
                          f"(sources with documents: {', '.join(sorted(known)) or 'none'})")
    out: dict[str, list] = {s: [] for s in SPLITS}
    for batch in iter_batches(layout.documents):
        batch = batch.filter(pc.is_in(batch.column("source"), pa.array(params.sft.sources)))
        texts = batch.column("text").to_pylist()
        for doc_id, doc in zip(batch.column("id").to_pylist(), chat.encode(texts, [True] * len(texts))):
            out["val" if is_val(doc_id, params.shard.val_fraction) else "train"].append(doc)
    return out


def write_split(directory: Path, packed: Packed, weights: list[np.ndarray], dtype: np.dtype, pad: int,
                rows_per_shard: int) -> dict:
    """Rows → Arrow shards of `rows_per_shard` rows, each ending in one pad token (weight 0)."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(0, len(packed.tokens), rows_per_shard):
        tokens = np.concatenate([*packed.tokens[i:i + rows_per_shard], [pad]]).astype(dtype)
        weight = np.concatenate([*weights[i:i + rows_per_shard], [0.0]]).astype(np.float32)
        path = directory / f"shard-{len(shards):05d}.arrow"
        shards.append({"path": f"{directory.name}/{path.name}", "tokens": len(tokens),
                       "rows": min(rows_per_shard, len(packed.tokens) - i), "sha256": write_shard(path, tokens, weight)})
    return {"tokens": sum(s["tokens"] for s in shards), "rows": len(packed.tokens),
            "supervised_tokens": sum(int((c == SUPERVISED).sum()) for c in packed.codes),
            "documents": None, "shards": shards}


def run(params: Params, layout: Layout = Layout()) -> StageResult:
    cfg, timer, row = params.sft, Timer(), params.model.block_size
    if not cfg.enabled:
        with atomic.atomic_dir(layout.sft) as tmp:
            atomic.write_json(tmp / "manifest.json", {"stage": "pack", "enabled": False})
        return finish(layout, "pack", "pack: skipped (sft.enabled is false)", {"enabled": False}, [layout.sft])
    tok = load(layout.tokenizer)
    chat = formats.load(layout.tokenizer, tok)
    pad = chat.eot
    dtype = np.dtype(np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32)
    by_split = conversations(layout, params, chat)
    splits, counts = {}, Counter()
    with atomic.atomic_dir(layout.sft) as tmp:
        for split, convs in by_split.items():
            packed = pack(convs, row, pad)
            if not packed.tokens:
                raise InputError(f"{layout.documents}: no conversation of sft.sources ({', '.join(cfg.sources)}) "
                                 f"in the {split} split to fine-tune on")
            splits[split] = write_split(tmp / split, packed, packed.weights(cfg.prompt_loss_weight), dtype, pad,
                                        max(1, params.shard.shard_tokens // row))
            splits[split]["documents"] = len(convs)
            counts.update({f"{split}: {k}": v for k, v in packed.counts.items()})
        manifest = {"stage": "pack", "format": SHARD_FORMAT, "enabled": True, "tokenizer_sha256": file_hash(layout.tokenizer),
                    "documents_fingerprint": fingerprint(layout.documents), "vocab_size": tok.get_vocab_size(),
                    "dtype": dtype.name, "eot_id": pad, "row_tokens": row, "sources": cfg.sources,
                    "prompt_loss_weight": cfg.prompt_loss_weight, "splits": splits, "counts": dict(counts)}
        atomic.write_json(tmp / "manifest.json", manifest)
    train = splits["train"]
    fill = train["supervised_tokens"] / (train["rows"] * row)
    metrics = {"enabled": True, "conversations": {s: v["documents"] for s, v in splits.items()},
               "rows": {s: v["rows"] for s, v in splits.items()},
               "supervised_tokens": {s: v["supervised_tokens"] for s, v in splits.items()},
               "supervised_share": round(fill, 4), "counts": dict(counts), "seconds": timer.seconds}
    summary = (f"pack: {train['documents']:,} conversations → {train['rows']:,} rows of {row} tokens "
               f"({fill:.0%} supervised), val {splits['val']['rows']:,} rows"
               + "".join(f"; {k} {v:,}" for k, v in sorted(counts.items()) if "skipped" in k or "dropped" in k)
               + f" → {os.path.relpath(layout.sft)} [{timer.seconds:.1f}s]")
    return finish(layout, "pack", summary, metrics, [layout.sft], params.tracking, {"sft": params_dict(params)["sft"]})
