"""Where each stage reads and writes, relative to a project root (the data contracts of DESIGN.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to a project root (DESIGN.md, data contracts)."""
    root: Path = Path(".")

    @property
    def documents(self) -> Path:
        return self.root / "data" / "documents"

    @property
    def tokenizer(self) -> Path:
        return self.root / "artifacts" / "tokenizer"

    @property
    def shards(self) -> Path:
        return self.root / "data" / "shards"

    @property
    def sft(self) -> Path:
        """Conversations packed into rows with loss weights (tasks/tokens/pack.py), in the shard format."""
        return self.root / "data" / "sft"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"
