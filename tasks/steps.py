"""How one optimizer step runs on the device training picked: the only part of the loop that differs.

    TorchStep    CPU and CUDA: micro-batches through autograd (autocast, DDP), clip, torch optimizers
    VulkanStep   Vulkan: one compiled IREE step (tasks/vulkan_step.py) with weights and AdamW state on the
                 GPU; verified against torch CPU before the first step

`tasks/train.py` calls `step(multiplier) -> (loss, grad_norm, parts)` every step and `sync()` before it
reads the model or the optimizer state (validation, samples, checkpoints). After `sync()` the model and
`Optimizers` hold exactly what a CPU run would hold, so a checkpoint does not say where it was trained:
train on Vulkan, resume on CPU, serve anywhere. Devices name their step in tasks/devices.py.
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch

from tasks.config import TrainParams
from tasks.errors import ConfigError, TrainingError
from tasks.optim import Optimizers

log = logging.getLogger("chatpipe.train")


class TorchStep:
    def __init__(self, model, train_model, optimizers: Optimizers, objective, cfg: TrainParams, reader, ranks,
                 device: torch.device, autocast, distilling: bool) -> None:
        self.model, self.train_model, self.optimizers, self.objective = model, train_model, optimizers, objective
        self.cfg, self.reader, self.ranks, self.device, self.autocast = cfg, reader, ranks, device, autocast

    def __call__(self, multiplier: float) -> tuple[float, float, dict]:
        cfg, ranks = self.cfg, self.ranks
        self.optimizers.set_lr(multiplier)
        loss_sum, part_sums = torch.zeros((), device=self.device), {}
        for micro in range(cfg.grad_accum):
            x, y = (t.to(self.device, non_blocking=True) for t in self.reader.next_batch())
            sync = micro == cfg.grad_accum - 1 or ranks.world == 1
            with (contextlib.nullcontext() if sync else self.train_model.no_sync()), self.autocast():
                loss, parts = self.objective(self.train_model, x, y)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float() / cfg.grad_accum
            for name, value in parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + value.float() / cfg.grad_accum
        loss_value = ranks.mean(loss_sum)
        if not math.isfinite(loss_value):
            return loss_value, math.nan, {}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).item()
        self.optimizers.step()
        self.optimizers.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return loss_value, grad_norm, {k: ranks.mean(v) for k, v in part_sums.items()}

    def sync(self) -> None:
        """Nothing to do: the model and the optimizers are the training state."""


class VulkanStep:
    """The model's weights and AdamW state live on the Vulkan device between syncs."""

    def __init__(self, model, train_model, optimizers: Optimizers, objective, cfg: TrainParams, reader, ranks,
                 device: torch.device, autocast, distilling: bool) -> None:
        from tasks import vulkan_step

        unsupported = [why for bad, why in (
            (distilling, "the distill phase (the teacher runs in torch)"),
            (cfg.optimizer != "adamw", f"optimizer {cfg.optimizer} (the compiled step is AdamW)"),
            (cfg.grad_accum != 1, "grad_accum > 1"), (ranks.world != 1, "torchrun (several processes)"),
            (cfg.compile, "train.compile"), (model.config.quant is not None, f"quant {model.config.quant}"),
            (model.config.moe is not None, "MoE layers")) if bad]
        if unsupported:
            raise ConfigError(f"params: train.device: vulkan does not support {', '.join(unsupported)}; "
                              "use cpu or cuda for this run")
        self.model, self.optimizers, self.cfg, self.reader = model, optimizers, cfg, reader
        self.trainer = vulkan_step.VulkanTrainer(model, batch_size=reader.batch_size, lr=cfg.lr,
                                                 betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                                                 weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
        position = reader.state_dict()
        x, y = reader.next_batch()  # the check's batch; the reader goes back, the run sees the same data
        reader.load_state_dict(position)
        self.trainer.self_check(model, x, y)
        self.trainer.load_state(self._trainer_state())  # where the model and optimizers are (resume included)
        log.info("vulkan: %s; compiled step %s in %.1fs", vulkan_step.device_name(),
                 "from cache" if self.trainer.cache_hit else "built", self.trainer.compile_seconds)

    def __call__(self, multiplier: float) -> tuple[float, float, dict]:
        x, y = self.reader.next_batch()
        try:
            loss, grad_norm = self.trainer.step(x, y, lr=self.cfg.lr * multiplier)
        except TrainingError:
            return math.nan, math.nan, {}
        return loss, grad_norm, {}

    def _adamw(self) -> torch.optim.Optimizer:
        [adamw] = self.optimizers.all
        return adamw

    def _trainer_state(self) -> dict:
        """The torch model and AdamW state in the trainer's format (zeros where AdamW has not stepped)."""
        params, adamw = dict(self.model.named_parameters()), self._adamw()
        state = {name: adamw.state.get(p, {}) for name, p in params.items()}
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        step = max((int(s["step"]) for s in state.values() if "step" in s), default=0)
        return {"model": self.model.state_dict(),
                "optimizer": {"step": step,
                              "exp_avg": {n: s.get("exp_avg", zeros[n]).detach() for n, s in state.items()},
                              "exp_avg_sq": {n: s.get("exp_avg_sq", zeros[n]).detach() for n, s in state.items()}}}

    def sync(self) -> None:
        """Weights into the model, m and v into torch's AdamW state (the format a CPU run checkpoints)."""
        state = self.trainer.state_dict()
        with torch.no_grad():
            self.model.load_state_dict(state["model"])
        opt, adamw = state["optimizer"], self._adamw()
        for name, p in self.model.named_parameters():
            adamw.state[p] = {"step": torch.tensor(float(opt["step"])), "exp_avg": opt["exp_avg"][name].clone(),
                              "exp_avg_sq": opt["exp_avg_sq"][name].clone()}


STEPS = {"torch": TorchStep, "vulkan": VulkanStep}  # by Device.step (tasks/devices.py)
