"""The trainer as a built component: `build(params, layout, phase) -> Trainer`, then `Trainer.fit()`.

Why two halves: everything a run needs before its first step — the device and precision, the model with its
kernels and memory settings, LoRA, the parallel mode, where it starts (tasks/train/resume.py), the step that
trains it and the MLflow run — is decided once, in `build`, so that `fit` is the training loop and nothing else:
step, log, validate, sample, save (in the spirit of nanochat's base_train and torchtitan's Trainer). What
differs between phases is their row (tasks/train/phases.py); how a step is taken is a `Step`
(tasks/train/backends/offload.py): torch's (tasks/train/step.py) or a device's own (Vulkan).

Host syncs: the step's loss and grad norm stay on the device (`Window`) until a step whose cadence logs,
validates, samples or saves reads them all at once, so a GPU runs ahead meanwhile. A non-finite loss stops the
run there, a verdict (the result's ok=False) and not a crash: the curve keeps that step, so the gate sees why.

Precision: bf16 autocast where the device computes bf16 natively (`train.precision`,
tasks/train/backends/devices.py), with fp32 weights and optimizer state unless `train.weights: bf16` (`memory`).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from tqdm import tqdm

from chatpipe.model.config import ModelConfig
from chatpipe.model.info import flops_per_token, param_counts
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.common.config import Params, TrainParams, params_dict
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.common.tracking import Run
from chatpipe.tasks.tokens.reader import TokenReader
from chatpipe.tasks.tokens.tokenizer import load as load_tokenizer
from chatpipe.tasks.train import checkpoint, curves, distill, lora, parallel, resume, sft
from chatpipe.tasks.train.backends import devices
from chatpipe.tasks.train.backends.offload import Step, StepContext
from chatpipe.tasks.train.distributed import Ranks
from chatpipe.tasks.train.objectives import OBJECTIVES
from chatpipe.tasks.train.optim import Optimizers, lr_multiplier
from chatpipe.tasks.train.phases import Phase
from chatpipe.tasks.train.pretrained import model_config  # the shape: a preset's, or model.init's
from chatpipe.tasks.train.samples import samples
from chatpipe.tasks.train.step import TorchStep


class Window:
    """The steps taken since the last host sync, as the step returned them (tensors on a GPU), read in one sync."""

    def __init__(self) -> None:
        self.rows, self.start = [], time.perf_counter()

    def add(self, n: int, loss, lr: float, grad_norm, parts: dict) -> None:
        self.rows.append((n, loss, lr, grad_norm, parts))

    def read(self) -> tuple[list[tuple], float]:
        """The rows as floats (the one sync), and the seconds they took."""
        rows = [(n, float(loss), lr, float(norm), {k: float(v) for k, v in parts.items()})
                for n, loss, lr, norm, parts in self.rows]
        now = time.perf_counter()
        seconds, self.rows, self.start = now - self.start, [], now
        return rows, seconds


@dataclass(kw_only=True)
class Trainer:
    """One phase's run, built (`build`); `fit` trains it to its last step."""
    phase: Phase
    params: Params
    layout: Layout
    cfg: TrainParams                    # the phase's recipe
    mcfg: ModelConfig
    model: Transformer
    stepper: Step
    optimizers: Optimizers
    reader: TokenReader
    ranks: Ranks
    mode: parallel.Mode
    device: torch.device
    autocast: Callable
    chat: object  # the run's chat format (tasks/chat/formats.py), holding the tokenizer
    shards: Path
    steps: int                          # the phase's last step
    state: dict                         # what checkpoints carry: step, curve, val, samples, init, MLflow run id
    inputs: dict                        # what the checkpoints depend on (tasks/train/resume.py)
    tracker: Run | None                 # the main rank's MLflow run
    teacher: distill.Teacher | None
    why: str                            # the device, precision and what trains, for the summary
    peak_flops: float | None
    timer: Timer
    stopped: str | None = None          # why a non-finite loss stopped the run
    tokens_per_s: float | None = None
    first: int = field(init=False)      # the step it resumed at (0: a fresh start)

    def __post_init__(self) -> None:
        self.first = self.state["step"]

    @property
    def directory(self) -> Path:
        return self.layout.checkpoints / self.phase.name

    def fit(self, on_checkpoint: Callable[[Path], None] | None = None) -> StageResult:
        """Train from where the run starts to the phase's last step; `on_checkpoint` gets each checkpoint written."""
        window = Window()
        bar = tqdm(total=self.steps, initial=self.first, desc=f"train {self.phase.name}", unit="step",
                   disable=not self.ranks.main, mininterval=1.0)
        with bar, self.tracker or contextlib.nullcontext():
            for n in range(self.first + 1, self.steps + 1):
                multiplier = lr_multiplier(n - 1, self.cfg, self.steps)
                loss, grad_norm, parts = self.stepper.step(multiplier)
                window.add(n, loss, self.cfg.optimizer.lr * multiplier, grad_norm, parts)
                bar.update(1)
                if not (due := self.due(n)):
                    continue
                if not self.log(n, *window.read(), bar):
                    break
                if due - {"log"}:
                    self.stepper.sync()  # the model and optimizers now hold the training state
                if "validate" in due:
                    self.validate(n)
                if "sample" in due:
                    self.sample(n)
                if "save" in due:
                    self.save(n, on_checkpoint)
        return self.result()

    def due(self, n: int) -> set[str]:
        """What step `n` does beyond the step: each on its cadence, and all of them at the last step."""
        every = {"log": self.cfg.log_every, "validate": self.cfg.validation.every,
                 "sample": self.cfg.sample.every, "save": self.cfg.checkpoint.every}
        return {what for what, k in every.items() if n == self.steps or n % k == 0}

    def log(self, n: int, rows: list[tuple], seconds: float, bar) -> bool:
        """The steps read since the last sync into the curve and MLflow; False if one's loss is not finite: the run
        stops there (its step stays in the curve, its grad norm NaN) with a verdict naming the last checkpoint."""
        self.tokens_per_s = self.cfg.batch_size * self.mcfg.block_size * len(rows) / seconds
        for i, loss, lr, norm, parts in rows:
            if not math.isfinite(loss):
                self.stopped = (f"step {i}: loss is {loss}; training stopped. Last good checkpoint: "
                                f"{checkpoint.latest(self.directory) or 'none'}")
                self.state["curve"].append([i, loss, lr, math.nan])
                if self.tracker:
                    self.tracker.finish("FAILED")
                return False
            self.state["curve"].append([i, loss, lr, norm])
            self.state["step"] = i
            if self.tracker:
                self.tracker.log(i, {"loss": loss, "lr": lr, "grad_norm": norm, **parts})
        if self.tracker:
            mfu = self.flops * self.tokens_per_s / (self.peak_flops * self.ranks.world) if self.peak_flops else None
            self.tracker.log(n, {"tokens_per_s": self.tokens_per_s, "mfu": mfu})
        bar.set_postfix(loss=f"{rows[-1][1]:.3f}", tok_s=f"{self.tokens_per_s:,.0f}", refresh=False)
        return True

    def validate(self, n: int) -> None:
        val = evaluate(self.model, self.shards, self.mcfg.block_size, self.reader.batch_size,
                       self.cfg.validation.batches, self.device, self.autocast, self.phase.weighted)
        self.state["val"].append([n, val])
        if self.tracker:
            self.tracker.log(n, {"val_loss": val, "val_ppl": math.exp(min(val, 50))})

    def sample(self, n: int) -> None:
        if self.ranks.main or self.mode.sharded:  # fsdp: each forward is collective
            self.state["samples"] = samples(self.model, self.chat, self.cfg.sample.tokens,
                                            seed=self.params.seed + n)
        if self.ranks.main:
            self.tracker.log_text("\n\n".join(f"{s['prompt']}{s['completion']}" for s in self.state["samples"]),
                                  f"samples/{self.phase.name}-step-{n:06d}.txt")

    def save(self, n: int, on_checkpoint: Callable[[Path], None] | None) -> None:
        if self.ranks.main:
            self.tracker.flush()
        saved = self.mode.save(self.directory, n, self.model, self.optimizers,
                               {"step": n, "phase": self.phase.name, "inputs": self.inputs,
                                "reader": self.reader.state_dict(), "train": self.state},
                               self.cfg.checkpoint.keep, self.ranks)  # every rank: fsdp's ranks each write their shards
        if self.ranks.main:
            curves.write(self.layout, self.phase.name, self.state)
            if on_checkpoint:
                on_checkpoint(saved)
        self.ranks.barrier()

    @cached_property
    def flops(self) -> float:
        return flops_per_token(self.mcfg, self.mcfg.block_size)

    def result(self) -> StageResult:
        """metrics/<phase>.json, the curves and the summary line (the main rank writes them)."""
        name, state, stopped, latest = self.phase.name, self.state, self.stopped, checkpoint.latest(self.directory)
        counts = param_counts(self.mcfg)
        metrics = {"phase": name, **curves.summary(state), **({"stopped": stopped} if stopped else {}),
                   "tokens_per_s": self.tokens_per_s,
                   "resumed_at": self.first if self.first else None, "device": self.why, "world_size": self.ranks.world,
                   "params_total": counts["total"], "params_active": counts["active"],
                   "params_trained": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                   "flops_per_token": self.flops, "checkpoint": str(latest) if latest else None,
                   "mlflow_run_id": state["mlflow_run_id"], "tracking_uri": self.tracker.uri if self.tracker else None,
                   "init": state["init"], **({"init_rows": state["init_rows"]} if "init_rows" in state else {}),
                   "samples": state["samples"], "seconds": self.timer.seconds,
                   **({"model": self.mcfg.to_dict(), "teacher": self.teacher.identity,
                       "distill": self.inputs["distill"]} if self.teacher else {})}
        summary = f"train {name}: {stopped}" if stopped else (
            f"train {name}: {metrics['steps']} steps on {self.why}, loss {metrics['final_loss']:.3f}"
            f" (val {metrics['final_val_loss']:.3f}), grad norm p99 {metrics['grad_norm_p99']:.2f}, "
            f"{(self.tokens_per_s or 0):,.0f} tokens/s → {latest} [{self.timer.seconds:.1f}s]")
        if not self.ranks.main:
            return StageResult(f"train_{name}", summary, metrics, (), ok=not stopped)
        curves.write(self.layout, name, state)
        return finish(self.layout, name, summary, metrics, [self.directory], ok=not stopped)  # stopped: the CLI exits 2


def build(params: Params, layout: Layout, phase: Phase, replace_stale: bool = False) -> Trainer:
    """Everything the phase's run needs before its first step, from its row and params; refuses what cannot run
    (what params alone decide was refused when they loaded) before any work."""
    timer, ranks, cfg = Timer(), Ranks(), phase.recipe(params)
    device_kind, why = devices.pick(cfg.device)
    check(phase, cfg, device_kind)
    mode = parallel.MODES[cfg.parallel]
    ranks.start(device_kind.name, group=mode.sharded)
    device = device_kind.torch_device(ranks.local)
    dtype, mixed = devices.precision(device_kind, cfg.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    shards = getattr(layout, phase.data)
    if not (shards / "manifest.json").exists():
        raise InputError(f"{shards}: no shards; run `chatpipe {'pack' if phase.weighted else 'shard'}` first")
    manifest = json.loads((shards / "manifest.json").read_text())
    teacher = distill.Teacher.load(params, layout, device) if phase.teacher else None
    mcfg = (distill.student_config if phase.teacher else model_config)(params, manifest["vocab_size"])
    per_rank = cfg.batch_size // (cfg.grad_accum * ranks.world)
    if per_rank * cfg.grad_accum * ranks.world != cfg.batch_size:
        raise ConfigError(f"params: train.batch_size: {cfg.batch_size} is not divisible by grad_accum "
                          f"({cfg.grad_accum}) × processes ({ranks.world})")
    if not phase.adapts(params):
        cfg = cfg.model_copy(update={"lora": None})
    lora.check(cfg.lora, mcfg)
    parallel.check(cfg, mcfg)

    torch.manual_seed(params.seed)
    model = Transformer(mcfg).to(device)
    kernels(model, cfg)
    memory(model, cfg)
    reader = TokenReader(shards, "train", mcfg.block_size, per_rank, seed=params.seed,
                         rank=ranks.rank, world_size=ranks.world)
    inputs = resume.run_inputs(phase, params, manifest, mcfg, cfg, "bf16" if dtype else "fp32", teacher)
    state, resumed = resume.start(phase, params, layout, model, reader, inputs, replace_stale, teacher)
    why = ", ".join(filter(None, (why, mixed, trains(model, cfg))))
    train_model = mode.wrap(model, cfg, ranks, device, dtype)  # fsdp: the model itself, sharded in place
    optimizers = Optimizers(model, cfg)  # after start: a LoRA run's adapters are attached now, and only they train
    if resumed:
        checkpoint.load_optimizer(resumed, model, optimizers)
    context = StepContext(model, train_model, optimizers, OBJECTIVES[phase.objective](params, teacher), cfg, reader,
                          ranks, device, autocast, weighted=phase.weighted)
    stepper = (device_kind.offload or TorchStep)(context)
    tracker = track(params, layout, phase, state, device_kind.name, manifest, mcfg, ranks, cfg) if ranks.main else None
    return Trainer(phase=phase, params=params, layout=layout, cfg=cfg, mcfg=mcfg, model=model, stepper=stepper,
                   optimizers=optimizers, reader=reader, ranks=ranks, mode=mode, device=device, autocast=autocast,
                   chat=formats.load(layout.tokenizer, load_tokenizer(layout.tokenizer)), shards=shards, steps=phase.steps(params), state=state,
                   inputs=inputs, tracker=tracker, teacher=teacher, why=why,
                   peak_flops=device_kind.peak_flops(ranks.local), timer=timer)


def check(phase: Phase, cfg: TrainParams, device: devices.Device) -> None:
    """What only the device picked and the phase decide: train's rules on the device `auto` chose, and whether the
    phase's row lets this device's step or fsdp train it."""
    if refused := cfg.refusal(device.name):
        raise ConfigError(f"params: {refused}")
    if device.offload and not phase.offload:
        raise ConfigError(f"params: train.device: {device.name} does not train the {phase.name} phase (its step runs "
                          "in torch); use cpu or cuda for this run")
    if cfg.parallel == "fsdp" and not phase.fsdp:
        raise ConfigError(f"params: train.parallel: fsdp does not train the {phase.name} phase; use ddp")


def kernels(model: Transformer, cfg: TrainParams) -> None:
    """train.kernels on the model (which device they need was checked when params loaded)."""
    if cfg.kernels == "torch":
        return
    try:
        model.use_kernels(cfg.kernels)
    except ModuleNotFoundError as e:  # kernels/cuda needs the cuda extra; its message says so
        raise ConfigError(f"params: train.kernels: {e}") from None


def memory(model: Transformer, cfg: TrainParams) -> None:
    """train.weights and train.activation_checkpointing on the model (before any weights are loaded into it).

    bf16 weights: the parameters, their gradients and torch's AdamW moments (it keeps them in the parameter's
    dtype) are all bf16, 8 bytes a parameter instead of 16, with no fp32 master copy: an update smaller than a
    weight's bf16 rounding step (~1/256 of it) is lost, which fine-tuning at low learning rates can feel.
    LoRA adapters stay fp32 on a bf16 base (tasks/train/lora.py)."""
    if cfg.weights == "bf16":
        model.to(torch.bfloat16)
    model.checkpoint_blocks(cfg.activation_checkpointing)


def trains(model: Transformer, cfg: TrainParams) -> str | None:
    """What trains and in which dtype, for the summary, when it is not every weight in fp32."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad})
    parts = [lora.describe(model, cfg.lora.model_dump())] if cfg.lora else []
    if cfg.weights != "fp32":
        parts.append(f"{cfg.weights} weights; trained weights, grads and AdamW moments {'/'.join(dtypes)}")
    return ", ".join(parts) or None


def track(params: Params, layout: Layout, phase: Phase, state: dict, device: str, manifest: dict, mcfg: ModelConfig,
          ranks: Ranks, cfg: TrainParams) -> Run:
    """The phase's MLflow run (the one it resumes, if any), its id kept in the state."""
    tracker = Run(params.tracking, layout.root, run_name=phase.name, run_id=state["mlflow_run_id"],
                  tags={"chatpipe.phase": phase.name, "chatpipe.device": device,
                        "chatpipe.tokenizer_sha256": manifest["tokenizer_sha256"],
                        "chatpipe.documents_fingerprint": manifest.get("documents_fingerprint", "")},
                  params={"phase": phase.name, **params_dict(params), "model_config": mcfg.to_dict(),
                          "params_total": param_counts(mcfg)["total"], "world_size": ranks.world},
                  flush_every=cfg.log_every)
    state["mlflow_run_id"] = tracker.run_id
    return tracker


@torch.no_grad()
def evaluate(model: Transformer, shards: Path, block_size: int, batch_size: int, batches: int,
             device: torch.device, autocast, weighted: bool = False) -> float:
    """Mean loss over the first `batches` validation batches, in a fixed order (weighted: per unit weight)."""
    model.eval()
    reader = TokenReader(shards, "val", block_size, batch_size, shuffle=False)
    loss, weight = 0.0, 0.0
    for _ in range(min(batches, max(1, reader.n_blocks // batch_size))):
        batch = [b.to(device) for b in reader.next_batch(weights=weighted)]
        with autocast():  # the weighted sum and its weight, or the batch's mean loss and 1
            total, units = (sft.weighted(model, *batch)[0], batch[2].sum()) if weighted else (model(*batch)[1], 1.0)
        loss, weight = loss + float(total), weight + float(units)
    model.train()
    return loss / weight
