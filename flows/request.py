"""What a flow run asks for: params (file + overlays + overrides) and the directory it works in.

Only strings travel between the flow, its tasks and remote workers; each side loads and validates the
params itself. One flow run at a time may use a directory: `lock()` says clearly who holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from chatpipe.tasks.common.config import Params, load_params
from chatpipe.tasks.common.errors import ChatpipeError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult
from chatpipe.tasks.pipeline import PIPELINE


@dataclass(frozen=True)
class Request:
    overlays: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    workdir: str = "."
    results: str | None = None  # the Prefect block the flow's tasks persist their results to (flows/stages.py)

    @property
    def root(self) -> Path:
        return Path(self.workdir)

    def load(self) -> Params:
        with contextlib.chdir(self.root):
            return load_params([Path(p) for p in self.overlays], self.overrides)

    def with_parent(self, run_id: str) -> Request:
        return replace(self, overrides=[*self.overrides, f"tracking.parent_run_id={run_id}"])

    def with_results(self, block: str) -> Request:
        return replace(self, results=block)

    def run(self, stage: str, **args) -> StageResult:
        params = self.load()
        with contextlib.chdir(self.root):
            return PIPELINE[stage](params, Layout(self.root), **args)

    @contextlib.contextmanager
    def lock(self):
        path = self.root / ".chatpipe.lock"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise ChatpipeError(f"{self.root} is in use by another chat-pipeline run ({f.read().strip()}); "
                                    "wait for it or use another directory (workdir)") from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
