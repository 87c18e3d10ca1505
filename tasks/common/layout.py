"""Where each stage reads and writes, relative to a project root (README.md, "What each stage writes")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The paths of a project rooted at `root`; what each holds is in README.md's "What each stage writes"."""
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
