"""Training: `chatpipe train --phase pilot|full|distill`.

A plain loop: schedule the learning rate, accumulate gradients over micro-batches, clip, step, record.
Around it: resume from the latest checkpoint (exactly: weights, optimizer, RNG and the reader's position
are restored, so a killed run continues with the same per-step losses), periodic validation loss and
sample generations, MLflow metrics, and `metrics/<phase>.json` with the loss curve as DVC plots.
The distill phase is the same loop with a student model and the distillation loss (tasks/distill.py).
Data-parallel under `torchrun` (gloo on CPU, NCCL on CUDA); bf16 autocast on CUDA.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model import Transformer, flops_per_token, generate, param_counts, preset
from model.config import ModelConfig
from tasks import atomic, checkpoint, devices, distill, steps
from tasks.bundle import STOP_MARKERS
from tasks.config import Params, TrainParams, params_dict
from tasks.distributed import Ranks
from tasks.errors import ConfigError, InputError, TrainingError
from tasks.optim import Optimizers, lr_multiplier
from tasks.reader import TokenReader
from tasks.stage import Layout, StageResult, Timer, finish
from tasks.tokenizer import load as load_tokenizer
from tasks.tracking import Run

PHASES = ("pilot", "full", "distill")
log = logging.getLogger("chatpipe.train")
SAMPLE_PROMPTS = ("<|user|> Hi! How are you doing today?\n<|assistant|>",
                  "<|user|> What do you like to do on the weekend?\n<|assistant|>",
                  "<|user|> Can you recommend a good book?\n<|assistant|>")


def model_config(params: Params, vocab_size: int) -> ModelConfig:
    try:
        return preset(params.model.preset, vocab_size=vocab_size, **params.model.overrides())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"params: model: {e}") from None


RECIPE = ("optimizer", "batch_size", "grad_accum", "lr", "lr_min", "warmup_steps", "beta1", "beta2",
          "weight_decay", "grad_clip", "muon_lr", "muon_momentum", "full_init")


def run_inputs(params: Params, manifest: dict, mcfg: ModelConfig, cfg: TrainParams,
               teacher: distill.Teacher | None = None) -> dict:
    """What a run's checkpoints depend on; step counts and logging cadence are not part of it."""
    shards = [s["sha256"] for split in manifest["splits"].values() for s in split["shards"]]
    inputs = {"tokenizer": manifest["tokenizer_sha256"],
              "data": hashlib.sha256(json.dumps(shards).encode()).hexdigest(),
              "model": mcfg.to_dict(),
              "recipe": {"seed": params.seed, **{k: getattr(cfg, k) for k in RECIPE}}}
    if teacher:
        d = params.distill
        inputs["teacher"] = teacher.identity
        inputs["distill"] = {"init": d.init, "alpha": d.alpha, "temperature": d.temperature, "top_k": d.top_k}
    return inputs


def differences(saved: dict | None, current: dict, keys=None) -> list[str]:
    """Human names of what differs between a checkpoint's inputs and this run's (all of them by default)."""
    if not saved:
        return ["unknown inputs"]
    out = []
    for key in keys or current:
        old, new = saved.get(key), current[key]
        if isinstance(new, dict) and isinstance(old, dict):
            if fields := sorted(k for k in new if old.get(k) != new[k]):
                out.append(f"{key} ({', '.join(fields)})")
        elif old != new:
            out.append(key)
    return out


def _start(phase: str, params: Params, layout: Layout, model: Transformer, optimizers: Optimizers,
           reader: TokenReader, inputs: dict, replace_stale: bool, teacher: distill.Teacher | None) -> dict:
    """Resume from the phase's latest checkpoint if it has the same inputs; else the pilot, the teacher
    (distill.init=teacher) or scratch.

    A checkpoint made from other inputs is refused with what differs — or, with `replace_stale` (DVC and
    the Prefect flow, which re-run a stage exactly when its inputs changed), moved aside.
    """
    state = {"step": 0, "curve": [], "val": [], "samples": [], "mlflow_run_id": None, "init": "scratch"}
    directory = layout.checkpoints / phase
    if resume := checkpoint.latest(directory):
        if diff := differences(checkpoint.read_state(resume).get("inputs"), inputs):
            if not replace_stale:
                raise ConfigError(f"{resume}: trained with different inputs: {'; '.join(diff)}. Re-run with "
                                  f"--replace-stale to start over (old checkpoints are moved aside)")
            aside = directory.with_name(f"{phase}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            directory.rename(aside)
            log.warning("inputs changed (%s): moved %s aside to %s; starting over", "; ".join(diff), directory, aside)
        else:
            opt_state, rng, saved = checkpoint.load(resume, model)
            optimizers.load_state_dict(opt_state)
            checkpoint.set_rng_state(rng)
            reader.load_state_dict(saved["reader"])
            return saved["train"]
    if phase == "full" and params.train.full_init == "pilot":
        pilot = checkpoint.latest(layout.checkpoints / "pilot")
        if pilot is None:
            raise InputError(f"{layout.checkpoints / 'pilot'}: no pilot checkpoint to start the full run from "
                             "(run the pilot first, or set train.full_init=scratch)")
        if diff := differences(checkpoint.read_state(pilot).get("inputs"), inputs, keys=("tokenizer", "model")):
            raise ConfigError(f"{pilot}: the pilot was trained with different inputs: {'; '.join(diff)}")
        checkpoint.load_weights(model, pilot)
        state["init"] = str(pilot)
    elif teacher and params.distill.init == "teacher":
        teacher.init_student(model)
        state["init"] = str(teacher.checkpoint)
    return state


def standard(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The pilot's and full run's objective: the model's own loss (cross-entropy + MoE aux)."""
    return model(x, y)[1], {}


@torch.no_grad()
def evaluate(model: Transformer, shards: Path, block_size: int, batch_size: int, batches: int,
             device: torch.device, autocast) -> float:
    """Mean loss over the first `batches` validation batches, in a fixed order."""
    model.eval()
    reader = TokenReader(shards, "val", block_size, batch_size, shuffle=False)
    losses = []
    for _ in range(min(batches, max(1, reader.n_blocks // batch_size))):
        x, y = reader.next_batch()
        with autocast():
            losses.append(model(x.to(device), y.to(device))[1].float().item())
    model.train()
    return float(np.mean(losses))


def samples(model: Transformer, tokenizer, max_tokens: int, seed: int, prompts=SAMPLE_PROMPTS, *,
            temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None) -> list[dict]:
    """One seeded generation per prompt, stopping at the turn markers; `stopped`: it ended on one."""
    stop = [tokenizer.token_to_id(t) for t in STOP_MARKERS]
    out = []
    for prompt in prompts:
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
        ids = generate(model, prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop=stop, seed=seed)
        room = min(max_tokens, model.config.block_size - len(prompt_ids))
        out.append({"prompt": prompt, "completion": tokenizer.decode(ids, skip_special_tokens=False),
                    "tokens": len(ids), "stopped": len(ids) < room})  # fewer than it could: a stop marker
    return out


def _write_curves(layout: Layout, phase: str, state: dict) -> None:
    for name, header, rows in ((f"{phase}_curve.csv", ("step", "loss", "lr", "grad_norm"), state["curve"]),
                               (f"{phase}_val.csv", ("step", "val_loss"), state["val"])):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        atomic.write_bytes(layout.root / "metrics" / name, buf.getvalue().encode())


def _summary_metrics(state: dict, window: int = 50) -> dict:
    losses = [row[1] for row in state["curve"]]
    norms = [row[3] for row in state["curve"]]
    return {
        "steps": len(losses),
        "final_loss": float(np.mean(losses[-window:])) if losses else None,
        "min_loss": min(losses) if losses else None,
        "final_val_loss": state["val"][-1][1] if state["val"] else None,
        "grad_norm_p99": float(np.percentile(norms, 99)) if norms else None,
        "grad_norm_max": max(norms) if norms else None,
    }


def _skipped(layout: Layout, phase: str) -> StageResult:
    """A phase switched off in params (distill.enabled: false): empty outputs, so DVC has them, and a record."""
    (layout.checkpoints / phase).mkdir(parents=True, exist_ok=True)
    _write_curves(layout, phase, {"curve": [], "val": []})
    return finish(layout, phase, f"train {phase}: skipped ({phase}.enabled is false)",
                  {"phase": phase, "enabled": False}, [layout.checkpoints / phase])


def run(params: Params, layout: Layout = Layout(), phase: str = "pilot",
        replace_stale: bool = False) -> StageResult:
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    if phase == "distill" and not params.distill.enabled:
        return _skipped(layout, phase)
    timer, ranks = Timer(), Ranks()
    device_kind, why = devices.pick(params.train.device)
    ranks.start(device_kind.name)
    device = device_kind.torch_device(ranks.local)
    autocast = (lambda: torch.autocast(device.type, dtype=device_kind.autocast)) if device_kind.autocast \
        else contextlib.nullcontext

    shard_manifest = layout.shards / "manifest.json"
    if not shard_manifest.exists():
        raise InputError(f"{layout.shards}: no shards; run `chatpipe shard` first")
    manifest = json.loads(shard_manifest.read_text())
    tokenizer = load_tokenizer(layout.tokenizer)
    teacher = distill.Teacher.load(params, layout, device) if phase == "distill" else None
    cfg = distill.recipe(params) if teacher else params.train
    mcfg = (distill.student_config if teacher else model_config)(params, manifest["vocab_size"])
    objective = teacher.objective(params) if teacher else standard
    per_rank = cfg.batch_size // (cfg.grad_accum * ranks.world)
    if per_rank * cfg.grad_accum * ranks.world != cfg.batch_size:
        raise ConfigError(f"params: train.batch_size: {cfg.batch_size} is not divisible by grad_accum "
                          f"({cfg.grad_accum}) × processes ({ranks.world})")

    torch.manual_seed(params.seed)
    model = Transformer(mcfg).to(device)
    if cfg.kernels != "torch":
        if device.type != "cuda":
            raise ConfigError(f"params: train.kernels: {cfg.kernels} kernels run on CUDA, and this run trains on "
                              f"{device_kind.name}; use train.kernels=torch")
        model.use_kernels(cfg.kernels)
    optimizers = Optimizers(model, cfg)
    reader = TokenReader(layout.shards, "train", mcfg.block_size, per_rank, seed=params.seed,
                         rank=ranks.rank, world_size=ranks.world)
    total = {"pilot": cfg.pilot_steps, "full": cfg.full_steps, "distill": params.distill.steps}[phase]
    directory = layout.checkpoints / phase
    inputs = run_inputs(params, manifest, mcfg, cfg, teacher)
    state = _start(phase, params, layout, model, optimizers, reader, inputs, replace_stale, teacher)

    train_model = ranks.wrap(model, device)
    if cfg.compile:
        train_model = torch.compile(train_model)

    optimizer_step = steps.STEPS[device_kind.step](model, train_model, optimizers, objective, cfg, reader, ranks,
                                                   device, autocast, distilling=teacher is not None)
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
    start_step, last_tps = state["step"], None
    status = "FAILED"
    try:
        for step in range(state["step"], total):
            t0 = time.perf_counter()
            multiplier = lr_multiplier(step, cfg, total)
            loss_value, grad_norm, parts = optimizer_step(multiplier)
            if not math.isfinite(loss_value):
                last = checkpoint.latest(directory)
                raise TrainingError(f"step {step + 1}: loss is {loss_value}; training stopped. Last good "
                                    f"checkpoint: {last or 'none'}")
            dt = time.perf_counter() - t0
            lr = cfg.lr * multiplier
            state["curve"].append([step + 1, loss_value, lr, grad_norm])
            state["step"] = step + 1
            last_tps = tokens_per_step / dt
            if tracker:
                mfu = flops * last_tps / (peak * ranks.world) if peak else None
                tracker.log(step + 1, {"loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                                       "tokens_per_s": last_tps, "mfu": mfu,
                                       "moe_aux_loss": float(getattr(model, "last_aux_loss", 0.0) or 0.0),
                                       **parts})
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{last_tps:,.0f}", refresh=False)
            bar.update(1)
            done = step + 1 == total
            if done or any((step + 1) % every == 0 for every in (cfg.eval_every, cfg.sample_every,
                                                                   cfg.checkpoint_every)):
                optimizer_step.sync()  # the model and optimizers now hold the training state
            if (step + 1) % cfg.eval_every == 0 or done:
                val = evaluate(model, layout.shards, mcfg.block_size, per_rank, cfg.eval_batches, device, autocast)
                state["val"].append([step + 1, val])
                if tracker:
                    tracker.log(step + 1, {"val_loss": val, "val_ppl": math.exp(min(val, 50))})
            if ranks.main and ((step + 1) % cfg.sample_every == 0 or done):
                state["samples"] = samples(model, tokenizer, cfg.sample_tokens, seed=params.seed + step + 1)
                tracker.log_text("\n\n".join(f"{s['prompt']}{s['completion']}" for s in state["samples"]),
                                 f"samples/{phase}-step-{step + 1:06d}.txt")
            if (step + 1) % cfg.checkpoint_every == 0 or done:
                if ranks.main:
                    tracker.flush()
                    checkpoint.save(directory, step + 1, model, optimizers.state_dict(),
                                    {"step": step + 1, "phase": phase, "inputs": inputs,
                                     "reader": reader.state_dict(), "train": state},
                                    keep=cfg.keep_checkpoints)
                    _write_curves(layout, phase, state)
                ranks.barrier()
        status = "FINISHED"
    finally:
        bar.close()
        if tracker:
            tracker.finish(status)

    latest = checkpoint.latest(directory)
    metrics = {"phase": phase, **_summary_metrics(state), "tokens_per_s": last_tps,
               "resumed_at": start_step if start_step else None, "device": why, "world_size": ranks.world,
               "params_total": counts["total"], "params_active": counts["active"],
               "flops_per_token": flops, "checkpoint": str(latest) if latest else None,
               "mlflow_run_id": state["mlflow_run_id"], "tracking_uri": tracker.uri if tracker else None,
               "init": state["init"], "samples": state["samples"], "seconds": timer.seconds,
               **({"model": mcfg.to_dict(), "teacher": teacher.identity, "distill": inputs["distill"]}
                  if teacher else {})}
    summary = (f"train {phase}: {metrics['steps']} steps on {why}, loss {metrics['final_loss']:.3f}"
               f" (val {metrics['final_val_loss']:.3f}), grad norm p99 {metrics['grad_norm_p99']:.2f}, "
               f"{(last_tps or 0):,.0f} tokens/s → {latest} [{timer.seconds:.1f}s]")
    if not ranks.main:
        return StageResult(f"train_{phase}", summary, metrics, ())
    _write_curves(layout, phase, state)
    return finish(layout, phase, summary, metrics, [directory])
