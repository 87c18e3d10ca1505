"""The torch training step: forward and backward over the micro-batches, clip, optimizer step.

One implementation of the trainer's `Step` (tasks/train/backends/offload.py); a device that runs the whole step
itself (Vulkan) is the other. Nothing here reads the GPU back: the loss, grad norm and parts stay tensors until
the trainer's next host sync, so a GPU runs ahead of the host.
"""
from __future__ import annotations

import contextlib

import torch

from chatpipe.tasks.train import parallel
from chatpipe.tasks.train.backends.offload import StepContext


def forward_backward(t: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward over `grad_accum` micro-batches; the gradients add up in the parameters.

    Returns this rank's mean loss and objective parts (distillation's ce and kd) as tensors. Under DDP only
    the last micro-batch all-reduces the gradients (`no_sync` around the others). With loss weights (sft)
    the objective's weighted sums are divided by the weight of the whole step, all micro-batches of all
    ranks (tasks/train/sft.py), read before any forward pass from the batches' weights on the host.
    """
    accum = t.cfg.grad_accum
    batches = []
    for _ in range(accum):
        batches.append(t.reader.next_batch(weights=t.weighted))
        if t.weighted:
            t.reader.check_supervised(batches[-1][2])  # never a loss of 0: an error naming the rows
    scale = 1 / accum
    if t.weighted:
        scale = t.ranks.world / t.ranks.total(sum(float(w.sum()) for _, _, w in batches), t.device)
    loss_sum, part_sums = torch.zeros((), device=t.device), {}
    for micro, batch in enumerate(batches):
        batch = [b.to(t.device, non_blocking=True) for b in batch]
        sync = micro == accum - 1 or t.ranks.world == 1
        with (contextlib.nullcontext() if sync else parallel.MODES[t.cfg.parallel].no_sync(t.train_model)), \
                t.autocast():
            loss, parts = t.objective(t.train_model, *batch)
        (loss * scale).backward()
        loss_sum += loss.detach().float() * scale
        for name, value in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + value.float() / accum
    return loss_sum, part_sums


class TorchStep:
    """The step on CPU and CUDA, under DDP or FSDP (whatever wraps `context.train_model`)."""

    def __init__(self, context: StepContext) -> None:
        self.context = context

    def step(self, multiplier: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        t = self.context
        t.optimizers.set_lr(multiplier)
        loss_sum, part_sums = forward_backward(t)
        loss = t.ranks.mean(loss_sum)
        grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.optimizer.grad_clip)
        t.optimizers.step()
        t.optimizers.zero_grad()
        parts = {name: t.ranks.mean(value) for name, value in part_sums.items()}
        if t.model.config.moe:  # a dense model's is always 0: not a metric (nor a copy) every step
            parts["moe_aux_loss"] = t.model.last_aux_loss.detach().clone()  # CUDA graphs reuse its memory
        return loss, grad_norm, parts

    def sync(self) -> None:
        """The model and optimizers are the training state already."""
