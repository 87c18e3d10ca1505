"""Optimizers and the learning-rate schedule, behind a small registry.

`adamw`: AdamW with weight decay on matrices only (embeddings and the head are matrices too; norms and
any 1-D parameter are not decayed). `muon`: `torch.optim.Muon` for the 2-D hidden matrices of the
blocks, AdamW for everything else (embeddings, head, norms, MoE expert banks, router), as in the Muon
write-up. Both follow one schedule (`train.schedule`): linear warmup, then cosine decay to `lr_min`, applied
as a multiplier of each group's peak rate.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from chatpipe.tasks.common.config import TrainParams

OPTIMIZERS: dict[str, Callable[[nn.Module, TrainParams], list[torch.optim.Optimizer]]] = {}


def register(name: str):
    def add(fn):
        OPTIMIZERS[name] = fn
        return fn
    return add


def lr_multiplier(step: int, cfg: TrainParams, total_steps: int) -> float:
    """Warmup over `warmup_steps` (step 0 gets 1/warmup), then cosine from 1 to lr_min/lr at the last step."""
    warmup = cfg.schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.schedule.lr_min / cfg.optimizer.lr
    span = max(1, total_steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _adamw(groups: list[dict], cfg: TrainParams) -> torch.optim.AdamW:
    """torch's fused AdamW (one kernel over all parameters, on CPU and CUDA): 5 ms a step against 18 ms for
    the default per-parameter loop at chat-7m on a 2-core CPU (docs/LOG.md)."""
    o = cfg.optimizer
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8, fused=True)


def _decay_groups(params: list[nn.Parameter], cfg: TrainParams) -> list[dict]:
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return [g for g in ({"params": decay, "weight_decay": cfg.optimizer.weight_decay, "name": "decay"},
                        {"params": rest, "weight_decay": 0.0, "name": "no_decay"}) if g["params"]]


def _unique(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # named_parameters dedups tied


@register("adamw")
def adamw(model: nn.Module, cfg: TrainParams) -> list[torch.optim.Optimizer]:
    return [_adamw(_decay_groups([p for _, p in _unique(model)], cfg), cfg)]


def hidden_matrices(model: nn.Module) -> set[int]:
    """ids of the 2-D weights inside blocks: not the embedding or the head (nor tied to them, nor LoRA's trainable
    rows of them, tasks/train/lora.py), not a router."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    vocab = {m.num_embeddings for m in embeddings}
    outside = {id(m.weight) for m in embeddings}
    outside |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m.out_features in vocab}
    return {id(p) for n, p in _unique(model)
            if p.dim() == 2 and id(p) not in outside and "router" not in n and "trainable_tokens" not in n}


@register("muon")
def muon(model: nn.Module, cfg: TrainParams) -> list[torch.optim.Optimizer]:
    named, chosen = _unique(model), hidden_matrices(model)
    hidden = [p for _, p in named if id(p) in chosen]
    rest = [p for _, p in named if id(p) not in chosen]
    o = cfg.optimizer
    optimizers = [torch.optim.Muon(hidden, lr=o.muon_lr, momentum=o.muon_momentum,
                                   weight_decay=o.weight_decay)] if hidden else []
    return optimizers + [_adamw(_decay_groups(rest, cfg), cfg)]


class Optimizers:
    """Several optimizers stepped as one, with the schedule applied to every group's peak rate."""

    def __init__(self, model: nn.Module, cfg: TrainParams) -> None:
        self.all = OPTIMIZERS[cfg.optimizer.name](model, cfg)
        for opt in self.all:
            for group in opt.param_groups:
                group["peak_lr"] = group["lr"]

    def set_lr(self, multiplier: float) -> None:
        for opt in self.all:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * multiplier

    def step(self) -> None:
        for opt in self.all:
            opt.step()

    def zero_grad(self) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=True)

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.all]

    def load_state_dict(self, states: list[dict]) -> None:
        for opt, state in zip(self.all, states, strict=True):
            opt.load_state_dict(state)
