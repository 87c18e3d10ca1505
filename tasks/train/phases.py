"""The phase table: every training phase, declared once, beside the stage table (tasks/pipeline.py).

    pilot → (gate) → full → sft → distill

A `Phase` row says what differs between phases and nothing else: the data it reads and whether its loss is
weighted, its recipe (train's optimizer and schedule with the phase's own peak rate), its objective (by name,
tasks/train/objectives.py), where it starts from, whether a teacher teaches it, and whether LoRA, the Vulkan
offload and FSDP apply. Its length, switch and start live in the phase's own params section (`pilot.steps`,
`full: {steps, init}`, `sft: {enabled, steps, ...}`, `distill: {enabled, steps, init, ...}`). The trainer
(tasks/train/trainer.py), resume.py, lora.py, the CLI and the flow's report read the row; a new kind of phase
(say DPO) is one row here and one objective.

Kept free of torch, so the CLI and the report can read it cheaply.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from chatpipe.tasks.common.config import Params, TrainParams
from chatpipe.tasks.common.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Phase:
    name: str
    data: Literal["shards", "sft"]        # the Layout folder it reads: the token stream, or packed conversations
    weighted: bool = False                # per-token loss weights (the packed rows' third column), normalised per step
    objective: str = "lm"                 # the loss, by name in tasks/train/objectives.py
    recipe: Callable[[Params], TrainParams] = lambda params: params.train  # train with the phase's own peak rate
    start: Callable[[Params], str]        # where a fresh run starts: "scratch", "import" (model.init), "teacher",
    #                                       or another phase's name (its latest checkpoint's weights)
    teacher: bool = False                 # a teacher checkpoint (distill.teacher) teaches a new model: the model
    #                                       section with distill.student on top; not the line pilot → full → sft
    lora: bool = True                     # train.lora applies when the phase starts from trained weights
    offload: bool = True                  # a device that runs the whole step (Vulkan) may train it
    fsdp: bool = True                     # train.parallel=fsdp may shard it

    def section(self, params: Params):
        """The phase's own params section (steps, and enabled/init where the phase has them)."""
        return getattr(params, self.name)

    def steps(self, params: Params) -> int:
        return self.section(params).steps

    def enabled(self, params: Params) -> bool:
        return getattr(self.section(params), "enabled", True)

    def adapts(self, params: Params) -> bool:
        """Whether train.lora trains this phase: set, and the phase starts from trained weights (LoRA adapts them)."""
        return params.train.lora is not None and self.lora and self.start(params) != "scratch"


def peak(train: TrainParams, lr: float | None, warmup_steps: int | None = None) -> TrainParams:
    """train's recipe with another peak learning rate (the cosine floor keeps its ratio to the peak) and warm-up."""
    if lr is None:
        return train
    optimizer, schedule = train.optimizer, train.schedule
    return train.model_copy(update={
        "optimizer": optimizer.model_copy(update={"lr": lr}),
        "schedule": schedule.model_copy(update={"lr_min": lr * schedule.lr_min / optimizer.lr,
                                                 "warmup_steps": schedule.warmup_steps if warmup_steps is None
                                                 else warmup_steps})})


def _imported(params: Params) -> str:
    return "import" if params.model.init else "scratch"


PHASES: dict[str, Phase] = {p.name: p for p in (
    Phase(name="pilot", data="shards", start=_imported),
    Phase(name="full", data="shards",
          start=lambda params: "pilot" if params.full.init == "pilot" else _imported(params)),
    Phase(name="sft", data="sft", weighted=True, objective="weighted", start=lambda params: "full",
          recipe=lambda params: peak(params.train, params.sft.lr or params.train.optimizer.lr, params.sft.warmup_steps),
          offload=False),  # the compiled Vulkan step has no loss weights
    Phase(name="distill", data="shards", objective="distill", start=lambda params: params.distill.init, teacher=True,
          recipe=lambda params: peak(params.train, params.distill.lr),
          lora=False, offload=False),  # a new student trains every weight; its teacher runs in torch
)}

LINE = tuple(name for name, p in PHASES.items() if not p.teacher)  # one model trained on, phase after phase


def phase(name: str) -> Phase:
    if name not in PHASES:
        raise ConfigError(f"unknown phase {name!r}; expected one of {', '.join(PHASES)}")
    return PHASES[name]
