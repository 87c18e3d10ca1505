"""The training data reader: (x, y) batches from memory-mapped token shards, and their loss weights.

Each shard is split into non-overlapping blocks of `block_size + 1` tokens; an epoch is a seeded
permutation of all blocks of the split, and batches are taken in that order (across epochs without a
gap). The whole position is two integers (epoch, cursor), so `state_dict()`/`load_state_dict()` resume
exactly. Shards stay on disk (`pyarrow.memory_map`): only the rows of a batch are read into memory.
With `world_size > 1`, each rank reads its own slice of every global batch.

Beside the tokens, every shard holds a per-token loss weight (`loss_weight`; from the shard stage 0/1:
1 on the assistant's text and the marker that ends its turn, 1 on code and plain text; the pack stage's
rows may hold `sft.prompt_loss_weight` too); `next_batch(weights=True)`
adds it aligned with y, from the same blocks, so resume and the rank split cover it for free. Shards
written before the weights existed (manifest `format` < SHARD_FORMAT) are refused: rerun `chatpipe shard`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from chatpipe.tasks.common.errors import InputError

SHARD_FORMAT = 2  # 1: tokens only; 2: + loss_weight. Bump when the shard files change meaning.
COLUMNS = ("tokens", "loss_weight")
RESHARD = "rerun `chatpipe shard`"


def _mmap_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, loss weights) of one shard as numpy views over the memory-mapped file."""
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    if reader.num_record_batches != 1:
        raise InputError(f"{path}: expected one record batch, found {reader.num_record_batches}")
    batch = reader.get_batch(0)
    if missing := [c for c in COLUMNS if c not in batch.schema.names]:
        raise InputError(f"{path}: an old-format shard without the {' and '.join(missing)} column; {RESHARD}")
    tokens, weights = (batch.column(c).to_numpy(zero_copy_only=True) for c in COLUMNS)
    return tokens, weights


def require_supervised(weights: torch.Tensor, where: str) -> None:
    """A batch must hold a supervised token: an all-zero mask would give a loss of 0 and teach nothing."""
    if not bool((weights != 0).any()):
        raise InputError(f"{where}: no supervised token in this batch (every loss weight is 0); "
                         f"a masked loss would be 0 and teach nothing")


class TokenReader:
    def __init__(self, shards: Path, split: str, block_size: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        shards = Path(shards)
        manifest_path = shards / "manifest.json"
        if not manifest_path.exists():
            raise InputError(f"{shards}: no shards (manifest.json missing); run `chatpipe shard` first")
        self.manifest = json.loads(manifest_path.read_text())
        if (found := self.manifest.get("format", 1)) != SHARD_FORMAT:
            raise InputError(f"{manifest_path}: shards in format {found}, this reader reads format {SHARD_FORMAT} "
                             f"(tokens + loss weights); {RESHARD}")
        if split not in self.manifest["splits"]:
            raise InputError(f"{shards}: no split {split!r}")
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.paths = [shards / s["path"] for s in self.manifest["splits"][split]["shards"]]
        self.arrays, self.loss_weights = (list(c) for c in zip(*map(_mmap_shard, self.paths)))
        blocks = np.array([(len(a) - 1) // block_size for a in self.arrays], dtype=np.int64)
        self.n_blocks = int(blocks.sum())
        if self.n_blocks == 0:
            raise InputError(f"{shards}: the {split} split has fewer than block_size+1={block_size + 1} tokens")
        self.starts = np.concatenate([[0], np.cumsum(blocks)])
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)
        self.last_blocks = np.empty(0, dtype=np.int64)  # this rank's blocks in the latest batch, for messages

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer_sha256"]

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = (np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks) if self.shuffle
                          else np.arange(self.n_blocks))
            self._perm_epoch = epoch
        return self._perm

    def _next_blocks(self, n: int) -> np.ndarray:
        out = []
        while n:
            take = min(n, self.n_blocks - self.cursor)
            out.append(self._order(self.epoch)[self.cursor:self.cursor + take])
            self.cursor += take
            n -= take
            if self.cursor == self.n_blocks:
                self.epoch, self.cursor = self.epoch + 1, 0
        return np.concatenate(out)

    def _locate(self, index: int) -> tuple[int, int]:
        """(shard, first token) of a block."""
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, (index - int(self.starts[shard])) * self.block_size

    def _rows(self, columns: list[np.ndarray], blocks: np.ndarray) -> np.ndarray:
        span = self.block_size + 1
        return np.stack([columns[s][start:start + span] for s, start in map(self._locate, blocks.tolist())])

    def next_batch(self, weights: bool = False):
        """(x, y), or with `weights` (x, y, w): w[b, t] is the loss weight of y[b, t] (float32)."""
        global_blocks = self._next_blocks(self.batch_size * self.world_size)
        self.last_blocks = global_blocks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        rows = torch.from_numpy(self._rows(self.arrays, self.last_blocks).astype(np.int64))
        if not weights:
            return rows[:, :-1], rows[:, 1:]
        w = torch.from_numpy(self._rows(self.loss_weights, self.last_blocks)[:, 1:].astype(np.float32))
        return rows[:, :-1], rows[:, 1:], w

    def where(self) -> str:
        """Where the latest batch came from: each row's shard and token range (for error messages)."""
        rows = []
        for row, block in enumerate(self.last_blocks.tolist()):
            shard, start = self._locate(block)
            rows.append(f"row {row}: {self.paths[shard]} tokens {start}..{start + self.block_size}")
        return f"{self.split} batch ({'; '.join(rows)}; reader now at epoch {self.epoch}, cursor {self.cursor})"

    def check_supervised(self, w: torch.Tensor) -> None:
        """The SFT guard: the latest batch's weights must not all be 0 (an InputError naming where it is)."""
        require_supervised(w, self.where())

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"split": self.split, "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor,
                "n_blocks": self.n_blocks, "block_size": self.block_size,
                "tokenizer_sha256": self.tokenizer_sha256}

    def load_state_dict(self, state: dict) -> None:
        for key in ("split", "seed", "n_blocks", "block_size", "tokenizer_sha256"):
            if state[key] != getattr(self, key):
                raise InputError(f"reader state does not match these shards: {key} is {state[key]!r}, "
                                 f"shards have {getattr(self, key)!r}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
