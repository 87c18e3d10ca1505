"""Training, the stage: `chatpipe train --phase pilot|full|sft|distill` (the stage table's "…train.loop:run").

A phase's row (tasks/train/phases.py) says what the phase is; `run` skips a phase switched off in params, else
builds its trainer and fits it (tasks/train/trainer.py). Around them, each in its own module: where a run starts
and when it may resume (tasks/train/resume.py: exactly, with the same per-step losses, when the inputs are the
same), checkpoints (tasks/train/checkpoint.py), the curve files `metrics/<phase>_*.csv` for DVC plots
(tasks/train/curves.py), MLflow metrics (tasks/common/tracking.py), devices (tasks/train/backends/devices.py),
the step (tasks/train/step.py; Vulkan's: tasks/train/backends/vulkan.py) and the parallel modes
(tasks/train/parallel.py: DDP or FSDP2 under `torchrun`, gloo on CPU, NCCL on CUDA).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from chatpipe.tasks.common.config import Params
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, finish
from chatpipe.tasks.train import curves
from chatpipe.tasks.train.phases import phase as row
from chatpipe.tasks.train.trainer import build


def skipped(layout: Layout, phase: str) -> StageResult:
    """A phase switched off in params (distill.enabled: false): empty outputs, so DVC has them, and a record."""
    (layout.checkpoints / phase).mkdir(parents=True, exist_ok=True)
    curves.write(layout, phase, {"curve": [], "val": []})
    return finish(layout, phase, f"train {phase}: skipped ({phase}.enabled is false)",
                  {"phase": phase, "enabled": False}, [layout.checkpoints / phase])


def run(params: Params, layout: Layout = Layout(), phase: str = "pilot",
        replace_stale: bool = False, on_checkpoint: Callable[[Path], None] | None = None) -> StageResult:
    """Train one phase to its step count, from where it left off (tasks/train/resume.py). `on_checkpoint` is
    called with each checkpoint once it is written (a worker elsewhere uploads it: flows/train_worker.py)."""
    p = row(phase)
    if not p.enabled(params):
        return skipped(layout, phase)
    return build(params, layout, p, replace_stale).fit(on_checkpoint)
