"""How the model spreads over the ranks: `train.parallel: ddp | fsdp`, a registry of the two.

ddp (the default): every rank holds the whole model and its AdamW state; DistributedDataParallel
all-reduces the gradients; rank 0 writes the checkpoint (tasks/train/checkpoint.py, safetensors).

fsdp: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`) as torchtitan applies it, for models whose
weights, gradients and AdamW moments do not fit one GPU (16 bytes a parameter in fp32 AdamW: ~3B
parameters fill an 80 GB GPU before any activation). Each rank keeps 1/N of every weight, gradient and
moment and all-gathers one block's weights at a time. The order is torchtitan's: activation checkpointing
per block (the model's own `checkpoint_blocks`, set by `train.activation_checkpointing`) → torch.compile per
block (`train.compile`, in place, so the state-dict keys do not change) → `fully_shard` per block → the
root (embedding, final norm, head). Its checkpoints are DCP checkpoints that every rank writes and that
load at any number of ranks (tasks/train/sharded.py). A process group exists even for one process, and the
mesh is explicit: a CPU mesh (gloo) on CPU, where FSDP would otherwise look for CUDA.

Precision under fsdp: on CUDA, when `train.precision` resolves to bf16, MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32): the all-gathered weights are bf16 (half the traffic and memory), the gradients
reduce-scatter in fp32 into the fp32 shards that AdamW updates; autocast stays around the forward as under
ddp. On CPU no policy: the weights gather in fp32 and the bf16 path is the loop's autocast, as under ddp (it
keeps attention in fp32, model/transformer.py: attend), so on CPU fsdp computes the same step as ddp.
`train.weights: bf16` stores the shards in bf16 (no fp32 master copy), as it stores the whole model under ddp.

The data needs nothing: every micro-step reads the same global blocks whatever the world size
(tasks/tokens/reader.py: batch_size / grad_accum of them, split by rank), so the reader's position in a
checkpoint resumes exactly at another number of ranks.

Supported under fsdp: cpu and cuda; dense and MoE models (an MoE layer's expert banks are parameters of its
block and shard with it, along the expert dimension); adamw; fp32 or bf16 weights; activation checkpointing;
compile; any number of processes, one included. Refused with a line naming the param: vulkan, muon and LoRA
when params load (tasks/common/config.py: TRAIN_RULES), ternary (BitLinear) models once the model's shape is
known (`check`: a preset or an import decides it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from chatpipe.model.config import ModelConfig
from chatpipe.tasks.common.config import TrainParams
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.train import checkpoint
from chatpipe.tasks.train.distributed import Ranks
from chatpipe.tasks.train.optim import Optimizers


def _ddp(model: nn.Module, cfg: TrainParams, ranks: Ranks, device: torch.device, dtype) -> nn.Module:
    """DistributedDataParallel when there is more than one process, then torch.compile over the whole."""
    wrapped = model if ranks.world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[ranks.local] if device.type == "cuda" else None)
    if cfg.compile:
        wrapped = torch.compile(wrapped, **({"mode": cfg.compile} if isinstance(cfg.compile, str) else {}))
    return wrapped


def _fsdp(model: nn.Module, cfg: TrainParams, ranks: Ranks, device: torch.device, dtype) -> nn.Module:
    """fully_shard each block, then the root, over a 1-D mesh of all ranks; in place (the model is returned)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)  # FSDP's buffers and NCCL's collectives on this rank's GPU, not cuda:0
    mesh = init_device_mesh(device.type, (ranks.world,))
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) \
        if device.type == "cuda" and dtype == torch.bfloat16 else MixedPrecisionPolicy()
    for block in model.blocks:
        if cfg.compile:
            block.compile(**({"mode": cfg.compile} if isinstance(cfg.compile, str) else {}))
        fully_shard(block, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def _save_whole(directory: Path, step: int, model: nn.Module, optimizers: Optimizers, state: dict, keep: int,
                ranks: Ranks) -> Path | None:
    return checkpoint.save(directory, step, model, optimizers.state_dict(), state, keep) if ranks.main else None


@dataclass(frozen=True)
class Mode:
    wrap: Callable[..., nn.Module]  # (model, cfg, ranks, device, compute dtype or None) -> the model to train
    no_sync: Callable[[nn.Module], ContextManager]  # around a micro-batch whose gradients are not reduced yet
    save: Callable[..., Path | None]  # (directory, step, model, optimizers, state, keep, ranks), called on every rank;
    # the checkpoint written (on the main rank)
    sharded: bool  # forward passes are collective: every rank must run each one (validation, samples)


MODES = {
    "ddp": Mode(_ddp, lambda model: model.no_sync(), _save_whole, sharded=False),
    # fsdp reduce-scatters every micro-batch: skipping it would keep whole gradients, what fsdp exists to avoid
    "fsdp": Mode(_fsdp, lambda model: contextlib.nullcontext(), checkpoint.save_sharded, sharded=True),
}


def check(cfg: TrainParams, mcfg: ModelConfig) -> None:
    """Refuse the model shapes train.parallel=fsdp does not shard, in one line naming the param (what params alone
    decide is refused when they load)."""
    if cfg.parallel == "fsdp" and mcfg.quant == "ternary":
        raise ConfigError("params: model.quant: not supported with train.parallel=fsdp: ternary BitLinear weights "
                          "are not sharded; use train.parallel=ddp (or distill.student.quant: null)")
