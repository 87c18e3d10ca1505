"""Where a training phase starts: its own latest checkpoint, the pilot, the teacher, or scratch.

The policy: a phase resumes exactly (weights, optimizer, RNG and the reader's position, so a killed run
continues with the same per-step losses) when its latest checkpoint was made from the same inputs: the
code the phase runs (its folders in the stage table), tokenizer, data, model shape and recipe (with the
precision it resolved to: bf16 and fp32 steps differ)
(`run_inputs`; step counts and logging cadence are not inputs, so asking for more steps resumes). Code is
an input because a re-run after an edit of the training step must train with the new step, not resume
the old one's finished run. A checkpoint made from other inputs is refused, naming what differs
(`differences`); with `replace_stale` (DVC and the Prefect flow, which re-run a stage exactly when its
inputs changed) it is moved aside and the phase starts over. Starting over: the full run from the pilot's
weights (`train.full_init: pilot`, refused if the pilot had another tokenizer or model), the distill
student from the teacher's (`distill.init: teacher`), else from the seed's random init.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from model import Transformer
from model.config import ModelConfig
from tasks import PIPELINE
from tasks.common.config import PROJECT_ROOT, Params, TrainParams
from tasks.common.errors import ConfigError, InputError
from tasks.common.hashing import code_hash
from tasks.common.layout import Layout
from tasks.tokens.reader import TokenReader
from tasks.train import checkpoint, distill
from tasks.train.optim import Optimizers

log = logging.getLogger("chatpipe.train")

RECIPE = ("optimizer", "batch_size", "grad_accum", "lr", "lr_min", "warmup_steps", "beta1", "beta2",
          "weight_decay", "grad_clip", "muon_lr", "muon_momentum", "full_init")


def run_inputs(phase: str, params: Params, manifest: dict, mcfg: ModelConfig, cfg: TrainParams, precision: str,
               teacher: distill.Teacher | None = None) -> dict:
    """What a run's checkpoints depend on; step counts and logging cadence are not part of it."""
    shards = [s["sha256"] for split in manifest["splits"].values() for s in split["shards"]]
    inputs = {"code": code_hash(PIPELINE[phase].code, PROJECT_ROOT), "tokenizer": manifest["tokenizer_sha256"],
              "data": hashlib.sha256(json.dumps(shards).encode()).hexdigest(),
              "model": mcfg.to_dict(),
              "recipe": {"seed": params.seed, **{k: getattr(cfg, k) for k in RECIPE}, "precision": precision}}
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


def _aside(directory: Path) -> Path:
    """Where stale checkpoints go: `<phase>.replaced-<time>`, with -2, -3... if that name is taken (two
    replacements within one second, which a fast test run makes)."""
    stem = f"{directory.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = directory.with_name(stem), 1
    while aside.exists():
        n += 1
        aside = directory.with_name(f"{stem}-{n}")
    return aside


def start(phase: str, params: Params, layout: Layout, model: Transformer, optimizers: Optimizers,
          reader: TokenReader, inputs: dict, replace_stale: bool, teacher: distill.Teacher | None) -> dict:
    """The loop's state to start from, with the model, optimizers, RNG and reader put where it starts.

    Resume from the phase's latest checkpoint if it has the same inputs; else the pilot, the teacher
    (distill.init=teacher) or scratch (see the module docstring).
    """
    state = {"step": 0, "curve": [], "val": [], "samples": [], "mlflow_run_id": None, "init": "scratch"}
    directory = layout.checkpoints / phase
    if latest := checkpoint.latest(directory):
        if diff := differences(checkpoint.read_state(latest).get("inputs"), inputs):
            if not replace_stale:
                raise ConfigError(f"{latest}: trained with different inputs: {'; '.join(diff)}. Re-run with "
                                  f"--replace-stale to start over (old checkpoints are moved aside)")
            aside = _aside(directory)
            directory.rename(aside)
            log.warning("inputs changed (%s): moved %s aside to %s; starting over", "; ".join(diff), directory, aside)
        else:
            opt_state, rng, saved = checkpoint.load(latest, model)
            optimizers.load_state_dict(opt_state)
            checkpoint.set_rng_state(rng)
            reader.load_state_dict(saved["reader"])
            return saved["train"]
    if before := {"full": "pilot" if params.train.full_init == "pilot" else None, "sft": "full"}.get(phase):
        start = checkpoint.latest(layout.checkpoints / before)
        if start is None:
            raise InputError(f"{layout.checkpoints / before}: no {before} checkpoint to start the {phase} run from "
                             f"(run the {before} phase first" + (", or set train.full_init=scratch)" if phase == "full" else ")"))
        if diff := differences(checkpoint.read_state(start).get("inputs"), inputs, keys=("tokenizer", "model")):
            raise ConfigError(f"{start}: the {before} run was trained with different inputs: {'; '.join(diff)}")
        checkpoint.load_weights(model, start)
        state["init"] = str(start)
    elif teacher and params.distill.init == "teacher":
        teacher.init_student(model)
        state["init"] = str(teacher.checkpoint)
    return state
