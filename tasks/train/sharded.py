"""The DCP part of an fsdp checkpoint: model and optimizer state as torch.distributed.checkpoint files.

Every rank writes the shards it holds (`__<rank>_0.distcp`) and DCP's `.metadata` indexes them by parameter
name and global shape, never by rank: a checkpoint written by N ranks loads on M (DCP reads the slices each
loading rank's shards cover), one process without a process group included. tasks/train/checkpoint.py wraps
these files into a step-NNNNNN checkpoint (per-rank RNG, state.json, checksums.json last, atomic rename).

`write` verifies what it saved, because DCP does not: it saves an optimizer state without a single moment
(an optimizer's own state_dict before its first step, or an optimizer over other parameters than the model
trains: one built before fully_shard replaced them, or over a subset) as quietly as a full one. Before writing, every trained parameter must have its AdamW moments; after, the
metadata DCP wrote must list every tensor of the state dict with its global shape.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_optimizer_state_dict


def is_sharded(path: Path) -> bool:
    """Whether checkpoint `path` is a DCP checkpoint (an fsdp run's), not safetensors + optimizer.pt."""
    return (Path(path) / ".metadata").exists()


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """The tensors of the saved state under the flat names DCP's metadata uses (`model.<fqn>`,
    `optim.state.<fqn>.<moment>`), with their global shapes."""
    model, optim = state["model"], state["optim"]["state"]
    out = {f"model.{k}": v for k, v in model.items() if isinstance(v, torch.Tensor)}
    out.update({f"optim.state.{fqn}.{k}": v for fqn, moments in optim.items() for k, v in moments.items()
                if isinstance(v, torch.Tensor) and v.dim() > 0})
    return out


def write(tmp: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer], main: bool) -> None:
    """Every rank: its shards of the model and optimizer state into `tmp` (which all ranks see), verified."""
    model_state, optim_state = get_state_dict(model, optimizers)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    if missing := sorted(name for name in trained if not optim_state["state"].get(name)):
        raise RuntimeError(f"{tmp}: refusing to save an optimizer state without moments for "
                           f"{len(missing)} of {len(trained)} trained parameters (e.g. {missing[0]})")
    state = {"model": model_state, "optim": optim_state}
    dcp.save(state, checkpoint_id=tmp)
    if main:
        saved = dcp.FileSystemReader(tmp).read_metadata().state_dict_metadata
        wrong = [k for k, v in _tensors(state).items() if k not in saved or tuple(saved[k].size) != tuple(v.shape)]
        if wrong:
            raise RuntimeError(f"{tmp}: DCP's metadata lacks or misshapes {len(wrong)} saved tensors "
                               f"(e.g. {wrong[0]}); the checkpoint is not kept")


def load_weights(model: nn.Module, path: Path) -> None:
    """The whole model of DCP checkpoint `path` into a plain (unsharded) model, in this process alone."""
    state = model.state_dict()
    with warnings.catch_warnings():  # that it loads in one process is the point, not news
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": state}, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state)


def load_optimizer(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
    """Every rank: the optimizer state of DCP checkpoint `path` into the optimizers of a fully_shard-ed model,
    resharded to this world size (get_state_dict's freshly initialized state is the template DCP fills)."""
    _, optim_state = get_state_dict(model, optimizers)
    dcp.load({"optim": optim_state}, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizers, optim_state)
