"""The losses a phase trains on, by name (a phase row's `objective`, tasks/train/phases.py).

Each entry builds `loss(model, x, y[, w]) -> (loss, parts)` for a run: the model's own loss, sft's weighted sum
(tasks/train/sft.py) or distillation's (tasks/train/distill.py, which needs the run's teacher). A new kind of
phase adds its loss here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from chatpipe.tasks.common.config import Params
from chatpipe.tasks.train import sft
from chatpipe.tasks.train.distill import Teacher


def standard(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The model's own loss (cross-entropy + MoE aux)."""
    return model(x, y)[1], {}


OBJECTIVES: dict[str, Callable[[Params, Teacher | None], Callable]] = {
    "lm": lambda params, teacher: standard,
    "weighted": lambda params, teacher: sft.weighted,
    "distill": lambda params, teacher: teacher.objective(params),
}
