"""The training data reader: (x, y) batches from memory-mapped token shards.

Each shard is split into non-overlapping blocks of `block_size + 1` tokens; an epoch is a seeded
permutation of all blocks of the split, and batches are taken in that order (across epochs without a
gap). The whole position is two integers (epoch, cursor), so `state_dict()`/`load_state_dict()` resume
exactly. Shards stay on disk (`pyarrow.memory_map`): only the rows of a batch are read into memory.
With `world_size > 1`, each rank reads its own slice of every global batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tasks.common.errors import InputError


def _mmap_tokens(path: Path) -> np.ndarray:
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    if reader.num_record_batches != 1:
        raise InputError(f"{path}: expected one record batch, found {reader.num_record_batches}")
    return reader.get_batch(0).column(0).to_numpy(zero_copy_only=True)


class TokenReader:
    def __init__(self, shards: Path, split: str, block_size: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        shards = Path(shards)
        manifest_path = shards / "manifest.json"
        if not manifest_path.exists():
            raise InputError(f"{shards}: no shards (manifest.json missing); run `chatpipe shard` first")
        self.manifest = json.loads(manifest_path.read_text())
        if split not in self.manifest["splits"]:
            raise InputError(f"{shards}: no split {split!r}")
        self.split, self.block_size, self.batch_size = split, block_size, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.arrays = [_mmap_tokens(shards / s["path"]) for s in self.manifest["splits"][split]["shards"]]
        blocks = np.array([(len(a) - 1) // block_size for a in self.arrays], dtype=np.int64)
        self.n_blocks = int(blocks.sum())
        if self.n_blocks == 0:
            raise InputError(f"{shards}: the {split} split has fewer than block_size+1={block_size + 1} tokens")
        self.starts = np.concatenate([[0], np.cumsum(blocks)])
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

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

    def _block(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        start = (index - int(self.starts[shard])) * self.block_size
        return self.arrays[shard][start:start + self.block_size + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        global_blocks = self._next_blocks(self.batch_size * self.world_size)
        mine = global_blocks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        rows = torch.from_numpy(np.stack([self._block(int(i)) for i in mine]).astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

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
