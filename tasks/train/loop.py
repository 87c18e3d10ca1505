"""Training: `chatpipe train --phase pilot|full|distill`.

A plain loop: schedule the learning rate, forward and backward over the micro-batches, clip, step,
record; every so often the validation loss, sample generations and a checkpoint. The distill phase is the
same loop with a student model and the distillation loss (tasks/train/distill.py). Data-parallel under
`torchrun` (gloo on CPU, NCCL on CUDA), replicated (DDP) or sharded (FSDP2, `train.parallel`,
tasks/train/parallel.py); bf16 autocast where the device computes bf16 natively
(`train.precision`, tasks/train/backends/devices.py), with fp32 weights and optimizer state unless
`train.weights: bf16` (`memory`). For memory too: `train.activation_checkpointing`, and `train.lora`, which
trains low-rank adapters on a frozen base (tasks/train/lora.py).

Around it, each in its own module: where a run starts and when it may resume (tasks/train/resume.py:
exactly, with the same per-step losses, when the inputs are the same), checkpoints
(tasks/train/checkpoint.py), the curve files `metrics/<phase>_*.csv` for DVC plots
(tasks/train/curves.py), MLflow metrics (tasks/common/tracking.py), and devices
(tasks/train/backends/devices.py). On Vulkan the device runs the whole step
(tasks/train/backends/offload.py) and the loop syncs its state back before reading the model.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from chatpipe.model.info import flops_per_token, param_counts
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.config import Params, TrainParams, params_dict
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, Timer, finish
from chatpipe.tasks.common.tracking import Run
from chatpipe.tasks.tokens.reader import TokenReader
from chatpipe.tasks.tokens.tokenizer import load as load_tokenizer
from chatpipe.tasks.train import checkpoint, curves, distill, lora, parallel, resume, sft
from chatpipe.tasks.train.backends import devices
from chatpipe.tasks.train.backends.offload import StepContext
from chatpipe.tasks.train.distributed import Ranks
from chatpipe.tasks.train.optim import Optimizers, lr_multiplier
from chatpipe.tasks.train.pretrained import model_config  # the shape: a preset's, or model.init's
from chatpipe.tasks.train.samples import samples

PHASES = ("pilot", "full", "sft", "distill")


def standard(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The pilot's and full run's objective: the model's own loss (cross-entropy + MoE aux)."""
    return model(x, y)[1], {}


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


def memory(model: Transformer, cfg: TrainParams, device: str) -> None:
    """train.weights and train.activation_checkpointing on the model (before any weights are loaded into it).

    bf16 weights: the parameters, their gradients and torch's AdamW moments (it keeps them in the parameter's
    dtype) are all bf16, 8 bytes a parameter instead of 16, with no fp32 master copy: an update smaller than a
    weight's bf16 rounding step (~1/256 of it) is lost, which fine-tuning at low learning rates can feel.
    LoRA adapters stay fp32 on a bf16 base (tasks/train/lora.py)."""
    for name, on in (("weights", cfg.weights == "bf16"), ("activation_checkpointing", cfg.activation_checkpointing)):
        if on and device == "vulkan":
            raise ConfigError(f"params: train.{name}: the vulkan step trains fp32 weights whole (IREE); "
                              "use train.device=cpu or cuda")
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


def skipped(layout: Layout, phase: str) -> StageResult:
    """A phase switched off in params (distill.enabled: false): empty outputs, so DVC has them, and a record."""
    (layout.checkpoints / phase).mkdir(parents=True, exist_ok=True)
    curves.write(layout, phase, {"curve": [], "val": []})
    return finish(layout, phase, f"train {phase}: skipped ({phase}.enabled is false)",
                  {"phase": phase, "enabled": False}, [layout.checkpoints / phase])


def run(params: Params, layout: Layout = Layout(), phase: str = "pilot",
        replace_stale: bool = False, on_checkpoint: Callable[[Path], None] | None = None) -> StageResult:
    """Train one phase to its step count, from where it left off (tasks/train/resume.py). `on_checkpoint` is
    called with each checkpoint once it is written (a worker elsewhere uploads it: flows/train_worker.py)."""
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    if (phase == "distill" and not params.distill.enabled) or (phase == "sft" and not params.sft.enabled):
        return skipped(layout, phase)
    timer, ranks, mode = Timer(), Ranks(), parallel.MODES[params.train.parallel]
    device_kind, why = devices.pick(params.train.device)
    ranks.start(device_kind.name, group=mode.sharded)
    device = device_kind.torch_device(ranks.local)
    dtype, mixed = devices.precision(device_kind, params.train.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    why = f"{why}, {mixed}"

    shards, weighted = (layout.sft, True) if phase == "sft" else (layout.shards, False)
    shard_manifest = shards / "manifest.json"
    if not shard_manifest.exists():
        raise InputError(f"{shards}: no shards; run `chatpipe {'pack' if weighted else 'shard'}` first")
    manifest = json.loads(shard_manifest.read_text())
    tokenizer = load_tokenizer(layout.tokenizer)
    teacher = distill.Teacher.load(params, layout, device) if phase == "distill" else None
    cfg = distill.recipe(params) if teacher else sft.recipe(params) if weighted else params.train
    mcfg = (distill.student_config if teacher else model_config)(params, manifest["vocab_size"])
    objective = teacher.objective(params) if teacher else sft.weighted if weighted else standard
    per_rank = cfg.batch_size // (cfg.grad_accum * ranks.world)
    if per_rank * cfg.grad_accum * ranks.world != cfg.batch_size:
        raise ConfigError(f"params: train.batch_size: {cfg.batch_size} is not divisible by grad_accum "
                          f"({cfg.grad_accum}) × processes ({ranks.world})")

    torch.manual_seed(params.seed)
    model = Transformer(mcfg).to(device)
    if cfg.kernels != "torch":
        if cfg.kernels == "triton" and device.type != "cuda":
            raise ConfigError(f"params: train.kernels: {cfg.kernels} kernels run on CUDA, and this run trains on "
                              f"{device_kind.name}; use train.kernels=torch")
        try:
            model.use_kernels(cfg.kernels)
        except ModuleNotFoundError as e:  # kernels/cuda needs the cuda extra; its message says so
            raise ConfigError(f"params: train.kernels: {e}") from None
    if not lora.applies(phase, params):
        cfg = cfg.model_copy(update={"lora": None})
    lora.check(cfg.lora, mcfg, device_kind.name)
    parallel.check(cfg, mcfg, device_kind.name)
    memory(model, cfg, device_kind.name)
    reader = TokenReader(shards, "train", mcfg.block_size, per_rank, seed=params.seed,
                         rank=ranks.rank, world_size=ranks.world)
    total = {"pilot": cfg.pilot_steps, "full": cfg.full_steps, "sft": params.sft.steps, "distill": params.distill.steps}[phase]
    directory = layout.checkpoints / phase
    inputs = resume.run_inputs(phase, params, manifest, mcfg, cfg, "bf16" if dtype else "fp32", teacher)
    state, resumed = resume.start(phase, params, layout, model, reader, inputs, replace_stale, teacher)
    if note := trains(model, cfg):
        why = f"{why}, {note}"
    train_model = mode.wrap(model, cfg, ranks, device, dtype)  # fsdp: the model itself, sharded in place
    optimizers = Optimizers(model, cfg)  # after start: a LoRA run's adapters are attached now, and only they train
    if resumed:
        checkpoint.load_optimizer(resumed, model, optimizers)
    context = StepContext(model, train_model, optimizers, objective, cfg, reader, ranks, device, autocast,
                          distilling=teacher is not None, weighted=weighted)
    offloaded = device_kind.offload(context) if device_kind.offload else None  # Vulkan: the device steps

    counts = param_counts(mcfg)
    tracker = None
    if ranks.main:
        tracker = Run(params.tracking, layout.root, run_name=phase, run_id=state["mlflow_run_id"],
                      tags={"chatpipe.phase": phase, "chatpipe.device": device_kind.name,
                            "chatpipe.tokenizer_sha256": manifest["tokenizer_sha256"],
                            "chatpipe.documents_fingerprint": manifest.get("documents_fingerprint", "")},
                      params={"phase": phase, **params_dict(params), "model_config": mcfg.to_dict(),
                              "params_total": counts["total"], "world_size": ranks.world},
                      flush_every=cfg.log_every)
        state["mlflow_run_id"] = tracker.run_id

    tokens_per_step = cfg.batch_size * mcfg.block_size
    flops = flops_per_token(mcfg, mcfg.block_size)
    peak = device_kind.peak_flops(ranks.local)
    bar = tqdm(total=total, initial=state["step"], desc=f"train {phase}", unit="step", disable=not ranks.main,
               mininterval=1.0)
    start_step, tokens_per_s, stopped = state["step"], None, None
    window, window_start = [], time.perf_counter()  # steps since the last host sync
    with bar, tracker or contextlib.nullcontext():
        for step in range(state["step"], total):
            n = step + 1
            multiplier = lr_multiplier(step, cfg, total)
            if offloaded:
                loss, grad_norm, parts = offloaded.step(multiplier)
            else:  # no host sync here: the GPU runs ahead until the window is read
                optimizers.set_lr(multiplier)
                loss_sum, part_sums = forward_backward(context)
                loss = ranks.mean(loss_sum)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizers.step()
                optimizers.zero_grad()
                parts = {name: ranks.mean(value) for name, value in part_sums.items()}
                parts["moe_aux_loss"] = model.last_aux_loss.detach().clone()  # CUDA graphs reuse its memory
            window.append((n, loss, cfg.lr * multiplier, grad_norm, parts))
            bar.update(1)

            last = n == total
            validate, sample, save = (last or n % every == 0
                                      for every in (cfg.eval_every, cfg.sample_every, cfg.checkpoint_every))
            if not (last or validate or sample or save or n % cfg.log_every == 0):
                continue
            rows = [(i, float(loss), lr, float(norm), {k: float(v) for k, v in parts.items()})
                    for i, loss, lr, norm, parts in window]  # one sync for the whole window
            now = time.perf_counter()
            tokens_per_s = tokens_per_step * len(rows) / (now - window_start)
            window, window_start = [], now
            for i, loss, lr, norm, parts in rows:
                if not math.isfinite(loss):  # the curve keeps this step, so the gate sees why the run stopped
                    stopped = (f"step {i}: loss is {loss}; training stopped. Last good checkpoint: "
                               f"{checkpoint.latest(directory) or 'none'}")
                    state["curve"].append([i, loss, lr, math.nan])
                    break
                state["curve"].append([i, loss, lr, norm])
                state["step"] = i
                if tracker:
                    tracker.log(i, {"loss": loss, "lr": lr, "grad_norm": norm, **parts})
            if stopped:
                if tracker:
                    tracker.finish("FAILED")
                break
            if tracker:
                mfu = flops * tokens_per_s / (peak * ranks.world) if peak else None
                tracker.log(n, {"tokens_per_s": tokens_per_s, "mfu": mfu})
            bar.set_postfix(loss=f"{rows[-1][1]:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)

            if offloaded and (validate or sample or save):
                offloaded.sync()  # the model and optimizers now hold the training state
            if validate:
                val = evaluate(model, shards, mcfg.block_size, per_rank, cfg.eval_batches, device, autocast, weighted)
                state["val"].append([n, val])
                if tracker:
                    tracker.log(n, {"val_loss": val, "val_ppl": math.exp(min(val, 50))})
            if sample and (ranks.main or mode.sharded):  # fsdp: each forward is collective
                state["samples"] = samples(model, tokenizer, cfg.sample_tokens, seed=params.seed + n)
            if sample and ranks.main:
                tracker.log_text("\n\n".join(f"{s['prompt']}{s['completion']}" for s in state["samples"]),
                                 f"samples/{phase}-step-{n:06d}.txt")
            if save:
                if ranks.main:
                    tracker.flush()
                saved = mode.save(directory, n, model, optimizers, {"step": n, "phase": phase, "inputs": inputs,
                                                                    "reader": reader.state_dict(), "train": state},
                                  cfg.keep_checkpoints, ranks)  # every rank: fsdp's ranks each write their shards
                if ranks.main:
                    curves.write(layout, phase, state)
                    if on_checkpoint:
                        on_checkpoint(saved)
                ranks.barrier()

    latest = checkpoint.latest(directory)
    metrics = {"phase": phase, **curves.summary(state), **({"stopped": stopped} if stopped else {}),
               "tokens_per_s": tokens_per_s,
               "resumed_at": start_step if start_step else None, "device": why, "world_size": ranks.world,
               "params_total": counts["total"], "params_active": counts["active"],
               "params_trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "flops_per_token": flops, "checkpoint": str(latest) if latest else None,
               "mlflow_run_id": state["mlflow_run_id"], "tracking_uri": tracker.uri if tracker else None,
               "init": state["init"], **({"init_rows": state["init_rows"]} if "init_rows" in state else {}),
               "samples": state["samples"], "seconds": timer.seconds,
               **({"model": mcfg.to_dict(), "teacher": teacher.identity, "distill": inputs["distill"]}
                  if teacher else {})}
    summary = f"train {phase}: {stopped}" if stopped else (
        f"train {phase}: {metrics['steps']} steps on {why}, loss {metrics['final_loss']:.3f}"
        f" (val {metrics['final_val_loss']:.3f}), grad norm p99 {metrics['grad_norm_p99']:.2f}, "
        f"{(tokens_per_s or 0):,.0f} tokens/s → {latest} [{timer.seconds:.1f}s]")
    if not ranks.main:
        return StageResult(f"train_{phase}", summary, metrics, (), ok=not stopped)
    curves.write(layout, phase, state)
    return finish(layout, phase, summary, metrics, [directory], ok=not stopped)  # stopped: the CLI exits 2
