"""What a device whose optimizer step runs outside torch autograd must provide, and what it is built from.

Why: on CPU and CUDA the training loop itself does forward, backward, clip and the optimizer step
(tasks/train/loop.py), so the loop reads as training. A device that cannot run that through torch (Vulkan:
one IREE-compiled step with the weights and AdamW state on the GPU, tasks/train/backends/vulkan.py) takes
the whole step instead, behind two methods:

    step(multiplier) -> (loss, grad_norm, parts)   one optimizer step at lr × multiplier; a non-finite
                                                   loss means no step was taken (the loop then stops)
    sync()                                         weights and optimizer state back into the torch model
                                                   and `Optimizers`

The loop calls `sync()` before it reads the model or the optimizer state (validation, samples,
checkpoints); after it they hold exactly what a CPU run would hold, so a checkpoint does not say where it
was trained. Such a device names its factory in the registry (`Device.offload`,
tasks/train/backends/devices.py); the factory gets one `StepContext`, what the loop trains with.
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
    """Everything one optimizer step works with, built once per run by the loop."""
    model: Transformer                  # the model itself: parameters, checkpoints, samples
    train_model: torch.nn.Module        # what the forward pass calls: the model, or DDP / torch.compile around it
    optimizers: Optimizers
    objective: Callable                 # (model, x, y) -> (loss, parts): the model's loss, or distillation's;
    #                                     weighted: (model, x, y, w) -> (the weighted sum of the loss, parts)
    cfg: TrainParams                    # the phase's recipe (distill: train with distill's overrides)
    reader: TokenReader                 # this rank's training batches
    ranks: Ranks
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    distilling: bool
    weighted: bool = False              # per-token loss weights (sft): normalised over the whole optimizer step


class OffloadedStep(Protocol):
    def step(self, multiplier: float) -> tuple[float, float, dict[str, float]]: ...

    def sync(self) -> None: ...
