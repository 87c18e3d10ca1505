"""Where a training phase starts: its own latest checkpoint, or where its row says (tasks/train/phases.py).

The policy: a phase resumes exactly (weights, optimizer, RNG and the reader's position, so a killed run
continues with the same per-step losses) when its latest checkpoint was made from the same inputs: the
code the phase runs (its folders in the stage table), tokenizer, data, model shape and recipe (with the
precision it resolved to: bf16 and fp32 steps differ)
(`run_inputs`; step counts and logging cadence are not inputs, so asking for more steps resumes). Code is
an input because a re-run after an edit of the training step must train with the new step, not resume
the old one's finished run. A checkpoint made from other inputs is refused, naming what differs
(`differences`); with `replace_stale` (DVC and the Prefect flow, which re-run a stage exactly when its
inputs changed) it is moved aside and the phase starts over. Starting over: from where the phase's row says
(tasks/train/phases.py, `Phase.start`; one of `STARTS`): another phase's latest weights (the full run from the
pilot's with `full.init: pilot`, sft from the full run's; refused if that phase had another tokenizer or model),
the teacher's (distill with `distill.init: teacher`), `model.init`'s checkpoint (tasks/train/pretrained.py; its
content hash is an input), or the seed's random init.
A LoRA run (`train.lora`, tasks/train/lora.py) starts from there every time, resumed or not: its checkpoints
hold only the adapters, so its base is reloaded as a fresh start loads it, checked against the one its
checkpoint records (`inputs.base`), and the adapters attached before any are loaded. With an adopted tokenizer
its added chat markers' rows train too (`_token_rows`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from chatpipe.model.config import ModelConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.config import PROJECT_ROOT, Params, TrainParams
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.hashing import code_hash
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.pipeline import PIPELINE
from chatpipe.tasks.tokens.artifact import chat_markers
from chatpipe.tasks.tokens.reader import TokenReader
from chatpipe.tasks.train import checkpoint, distill, lora, pretrained
from chatpipe.tasks.train.phases import Phase

log = logging.getLogger("chatpipe.train")

RECIPE = ("batch_size", "grad_accum", "lora", "activation_checkpointing", "weights", "parallel")
SECTIONS = ("optimizer", "schedule")  # recorded key by key (`optimizer.lr`), so a difference names the key


def recipe(phase: Phase, params: Params, cfg: TrainParams, precision: str) -> dict:
    """The phase's recipe as its checkpoints record it: what shapes the steps, where a fresh run starts, and the
    precision it resolved to."""
    plain = cfg.model_dump(mode="json", include={*RECIPE, *SECTIONS})
    return {"seed": params.seed, **{key: plain[key] for key in RECIPE},
            **{f"{section}.{key}": value for section in SECTIONS for key, value in plain[section].items()},
            "start": phase.start(params), "precision": precision}


def run_inputs(phase: Phase, params: Params, manifest: dict, mcfg: ModelConfig, cfg: TrainParams, precision: str,
               teacher: distill.Teacher | None = None) -> dict:
    """What a run's checkpoints depend on; step counts and logging cadence are not part of it."""
    shards = [s["sha256"] for split in manifest["splits"].values() for s in split["shards"]]
    inputs = {"code": code_hash(PIPELINE[phase.name].code, PROJECT_ROOT), "tokenizer": manifest["tokenizer_sha256"],
              "data": hashlib.sha256(json.dumps(shards).encode()).hexdigest(),
              "model": mcfg.to_dict(),
              "recipe": recipe(phase, params, cfg, precision)}
    if params.model.init:
        inputs["init"] = pretrained.identity(params.model.init)  # a changed checkpoint is not resumed
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
        if key == "model" and isinstance(old, dict):  # as this code writes it (older checkpoints: other field names)
            old = ModelConfig.from_dict(old).to_dict()
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


def _stale(latest: Path, diff: list[str], replace_stale: bool) -> None:
    """Refuse a checkpoint made from other inputs, or (replace_stale) move its phase's directory aside."""
    if not replace_stale:
        raise ConfigError(f"{latest}: trained with different inputs: {'; '.join(diff)}. Re-run with "
                          f"--replace-stale to start over (old checkpoints are moved aside)")
    directory = latest.parent
    aside = _aside(directory)
    directory.rename(aside)
    log.warning("inputs changed (%s): moved %s aside to %s; starting over", "; ".join(diff), directory, aside)


def _resume(latest: Path, model: Transformer, reader: TokenReader) -> tuple[dict, Path]:
    rng, saved = checkpoint.load(latest, model, reader.rank)
    checkpoint.set_rng_state(rng)
    reader.load_state_dict(saved["reader"])  # a global position: any world size resumes it (tasks/train/parallel.py)
    return saved["train"], latest


class Start(NamedTuple):
    """What a fresh start loads its weights with."""
    origin: str                     # the phase row's start: a key of STARTS, or another phase's name
    phase: Phase
    params: Params
    layout: Layout
    model: Transformer
    inputs: dict
    teacher: distill.Teacher | None


def _from_phase(s: Start) -> dict:
    """Another phase's latest weights, refused if it had another tokenizer or model."""
    begin = checkpoint.latest(s.layout.checkpoints / s.origin)
    if begin is None:
        scratch = f", or set {s.phase.name}.init=scratch" if hasattr(s.phase.section(s.params), "init") else ""
        raise InputError(f"{s.layout.checkpoints / s.origin}: no {s.origin} checkpoint to start the {s.phase.name} "
                         f"run from (run the {s.origin} phase first{scratch})")
    if diff := differences(checkpoint.read_state(begin).get("inputs"), s.inputs, keys=("tokenizer", "model")):
        raise ConfigError(f"{begin}: the {s.origin} run was trained with different inputs: {'; '.join(diff)}")
    checkpoint.load_weights(s.model, begin)
    return {"init": str(begin)}


def _from_teacher(s: Start) -> dict:
    s.teacher.init_student(s.model)
    return {"init": str(s.teacher.checkpoint)}


STARTS: dict[str, Callable[[Start], dict]] = {  # what the state records: `init`, and an import's `init_rows`
    "scratch": lambda s: {"init": "scratch"},
    "import": lambda s: {"init": s.params.model.init, "init_rows": pretrained.init(s.model, s.params, s.layout)},
    "teacher": _from_teacher,
}


def start(phase: Phase, params: Params, layout: Layout, model: Transformer, reader: TokenReader, inputs: dict,
          replace_stale: bool, teacher: distill.Teacher | None) -> tuple[dict, Path | None]:
    """The loop's state to start from and the checkpoint it resumes (None: a fresh start), with the model,
    RNG and reader put where it starts; the optimizer states come from that checkpoint once the optimizers are
    built (checkpoint.load_optimizer).

    Resume from the phase's latest checkpoint if it has the same inputs; else start where the phase's row says
    (see the module docstring). A LoRA run (`recipe.lora` in the inputs) loads its base as a fresh start does,
    resumed or not (its checkpoints hold only the adapters), records it as `inputs["base"]` and attaches the
    adapters: its optimizers must be built after this.
    """
    state = {"step": 0, "curve": [], "val": [], "samples": [], "mlflow_run_id": None, "init": "scratch"}
    directory = layout.checkpoints / phase.name
    resuming = None
    if latest := checkpoint.latest(directory):
        if diff := differences(checkpoint.read_state(latest).get("inputs"), inputs):
            _stale(latest, diff, replace_stale)
        elif inputs["recipe"]["lora"]:
            resuming = latest  # its base first (below), then its adapters
        else:
            return _resume(latest, model, reader)
    origin = phase.start(params)
    state.update(STARTS.get(origin, _from_phase)(Start(origin, phase, params, layout, model, inputs, teacher)))
    if inputs["recipe"]["lora"]:
        return _adapt(state, layout, model, reader, inputs, resuming, replace_stale)
    return state, None


def _adapt(state: dict, layout: Layout, model: Transformer, reader: TokenReader, inputs: dict,
           resuming: Path | None, replace_stale: bool) -> tuple[dict, Path | None]:
    """A LoRA run, its base loaded (never random weights: `Phase.adapts`): record the base, attach the adapters,
    resume them if it may."""
    rows = _token_rows(state, layout)
    inputs["base"] = checkpoint.base_identity(state["init"], layout.checkpoints, state.get("init_rows"), rows)
    if resuming and (diff := differences(checkpoint.read_state(resuming).get("inputs"), inputs, keys=("base",))):
        _stale(resuming, diff, replace_stale)  # another base: the adapters would adapt the wrong weights
        resuming = None
    lora.attach(model, inputs["recipe"]["lora"], rows)
    return _resume(resuming, model, reader) if resuming else (state, None)


def _token_rows(state: dict, layout: Layout) -> list[int]:
    """The embedding (and head) rows a LoRA run trains beside its adapters: the chat markers the tokenizer stage
    added to an adopted tokenizer, and every row an import set to the mean. An import gives them one row, which
    frozen would keep `<|user|>` and `<|assistant|>` alike; in a later phase (sft) they train on, as the turns
    they mark are what it learns."""
    markers = chat_markers(layout.tokenizer)
    return sorted({*state.get("init_rows", []), *(markers["added"].values() if markers else [])})
