"""Ingest sources: one module per kind, registered by `@reader(kind)` in `base`."""
from chatpipe.tasks.ingest.sources import chat, code, distill, hf, synthetic_code  # noqa: F401  (registers the readers)
from chatpipe.tasks.ingest.sources.base import READERS, Doc, Skips

__all__ = ["READERS", "Doc", "Skips"]
