"""Chat fine-tuning (the `sft` phase): the loss on what the assistant says, weighed over the whole step.

The rows come from tasks/tokens/pack.py: whole conversations with a loss weight per target token (1 on the
assistant's text and the token that ends its turn, `sft.prompt_loss_weight` on the rest of the
conversation, 0 on padding). The objective returns the weighted *sum* of the per-token cross-entropy; the
loop divides by the sum of the weights over every micro-batch of the optimizer step on every rank (and
multiplies by the number of ranks, which DDP's gradient average divides out). So `grad_accum: 2` takes
exactly the step one batch of the same rows takes, whatever each micro-batch's share of supervised
tokens — a per-micro-batch mean would weigh a micro-batch with 5% supervised tokens as much as one with
90% (transformers fixed this in 2024; tests/train/test_sft.py checks it with such uneven masks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from chatpipe.tasks.train.distill import model_aux


def weighted(model, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Σ w · cross-entropy over the batch's targets (and the MoE balance loss, weighted by Σ w)."""
    logits = model(x)[0]
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    return (ce * w.flatten()).sum() + model_aux(model) * w.sum(), {}
