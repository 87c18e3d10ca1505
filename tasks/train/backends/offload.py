"""A training step as the trainer sees it, and what every implementation is built from.

Why: the trainer's loop (tasks/train/trainer.py, `Trainer.fit`) reads as training only if it does not care how a
step is taken. Two implementations plug in behind the same two methods: the torch step (tasks/train/step.py:
forward and backward over the micro-batches, clip, optimizer step, on CPU and CUDA, under DDP or FSDP), and a
device that runs the whole step outside torch autograd (Vulkan: one IREE-compiled step with the weights and
AdamW state on the GPU, tasks/train/backends/vulkan.py), which its device names in the registry
(`Device.offload`, tasks/train/backends/devices.py).

    step(multiplier) -> (loss, grad_norm, parts)   one optimizer step at lr × multiplier, as tensors or floats
                                                   (read at the next host sync); a non-finite loss from an
                                                   offloaded step means no step was taken (the loop then stops)
    sync()                                         weights and optimizer state back into the torch model
                                                   and `Optimizers` (the torch step: nothing to do)

The trainer calls `sync()` before it reads the model or the optimizer state (validation, samples,
checkpoints); after it they hold exactly what a CPU run would hold, so a checkpoint does not say where it
was trained. Each implementation is built from one `StepContext`, what the run trains with.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from chatpipe.model.transformer import Transformer
    from chatpipe.tasks.common.config import TrainParams
    from chatpipe.tasks.tokens.reader import TokenReader
    from chatpipe.tasks.train.distributed import Ranks
    from chatpipe.tasks.train.optim import Optimizers


@dataclass(frozen=True)
class StepContext:
    """Everything one optimizer step works with, built once per run by the trainer."""
    model: Transformer                  # the model itself: parameters, checkpoints, samples
    train_model: torch.nn.Module        # what the forward pass calls: the model, or DDP / torch.compile around it
    optimizers: Optimizers
    objective: Callable                 # (model, x, y) -> (loss, parts): the model's loss, or distillation's;
    #                                     weighted: (model, x, y, w) -> (the weighted sum of the loss, parts)
    cfg: TrainParams                    # the phase's recipe (tasks/train/phases.py: train with its own peak rate)
    reader: TokenReader                 # this rank's training batches
    ranks: Ranks
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    weighted: bool = False              # per-token loss weights (sft): normalised over the whole optimizer step


class Step(Protocol):
    def step(self, multiplier: float) -> tuple[float, float, dict[str, float]]: ...

    def sync(self) -> None: ...
