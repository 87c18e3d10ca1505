"""Checkpoints that resume exactly: `checkpoints/<phase>/step-NNNNNN/`.

A checkpoint holds the weights (`model.safetensors`), the optimizer states (`optimizer.pt`), the RNG
states (`rng.pt`), and `state.json` (step, data reader position, curve so far, model config, tokenizer
hash, MLflow run id). It is written to a temp directory and renamed, with `checksums.json` last, so a run
killed at any moment leaves either a whole checkpoint or none; `latest()` skips anything incomplete or
corrupt. Only the newest `keep` are kept.

An fsdp run's checkpoint (train.parallel: fsdp, tasks/train/parallel.py) holds DCP files in place of the weights
and optimizer files (tasks/train/sharded.py: `.metadata` and a `__<rank>_0.distcp` per rank), and an RNG
state per rank (`rng-<rank>.pt`), beside the same `state.json`; its `checksums.json` covers every file. Every
rank writes into one temp directory; after a barrier rank 0 seals and renames it (`save_sharded`). It
resumes at any number of ranks; one that finds no RNG file of its own takes rank 0's (nothing in a training
step draws random numbers but LoRA's dropout, which fsdp does not run). `load_weights` and `latest_model` read
it into a plain model in one process, so eval, publish and serve need not know how it was trained.

A LoRA run's checkpoint (tasks/train/lora.py) holds only the adapters in `model.safetensors`; its state.json
names the base they adapt (`inputs.base`: the checkpoint the run started from, relative to the checkpoints
directory, and that checkpoint's checksums.json hash; or model.init's import) and the embedding rows that
trained beside the adapters (`token_rows`, the chat markers added to an adopted tokenizer). `load_weights` and
`latest_model` give the whole model, base and adapters merged, so nothing that reads a checkpoint needs to
know it was a LoRA run.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from chatpipe.model.checkpoints import FORMATS
from chatpipe.model.checkpoints import prefix as spec_format
from chatpipe.model.config import ModelConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.tokens.tokenizer import file_hash
from chatpipe.tasks.train import lora, pretrained, sharded
from chatpipe.tasks.train.distributed import Ranks

log = logging.getLogger("chatpipe.checkpoint")
_STEP = re.compile(r"^step-(\d{6,})$")
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "state.json")
SHARDED_FILES = (".metadata", "rng-0.pt", "state.json")  # and the shards, which .metadata names


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: Path, step: int, model: nn.Module, optimizer: list[dict], state: dict, keep: int) -> Path:
    final = Path(directory) / f"step-{step:06d}"
    with atomic.atomic_dir(final) as tmp:
        if lora.adapted(model):
            lora.save(model, tmp / "model.safetensors")  # the adapters alone
        else:
            save_model(model, str(tmp / "model.safetensors"))  # stores a tied matrix once
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        _seal(tmp, state)
    _prune(directory, keep)
    return final


def save_sharded(directory: Path, step: int, model: nn.Module, optimizers, state: dict, keep: int,
                 ranks: Ranks) -> Path:
    """Every rank of an fsdp run: a DCP checkpoint, whole or not at all (see the module docstring)."""
    final = Path(directory) / f"step-{step:06d}"
    tmp = final.with_name(f".{final.name}.sharded-tmp")  # one name every rank knows
    if ranks.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ranks.barrier()
    sharded.write(tmp, model, optimizers.all, ranks.main)
    torch.save(rng_state(), tmp / f"rng-{ranks.rank}.pt")
    ranks.barrier()
    if ranks.main:
        _seal(tmp, state)
        atomic.replace_dir(tmp, final)
        _prune(directory, keep)
    ranks.barrier()
    return final


def _seal(tmp: Path, state: dict) -> None:
    """state.json, then checksums.json over every file: a checkpoint is complete once this is written."""
    atomic.write_json(tmp / "state.json", state)
    names = sorted(p.name for p in tmp.iterdir())
    atomic.write_json(tmp / "checksums.json", {name: sha256_file(tmp / name) for name in names})


def _prune(directory: Path, keep: int) -> None:
    for old in all_steps(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def all_steps(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _STEP.match(p.name)), key=lambda p: int(p.name[5:]))


def verify(path: Path) -> bool:
    try:
        sums = json.loads((path / "checksums.json").read_text())
        required = SHARDED_FILES if sharded.is_sharded(path) else FILES
        return set(required) <= set(sums) and all(sha256_file(path / name) == sums[name] for name in sums)
    except (OSError, ValueError, KeyError):
        return False


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint whose checksums hold; corrupt ones are skipped with a warning."""
    for path in reversed(all_steps(directory)):
        if verify(path):
            return path
        log.warning("skipping checkpoint %s: incomplete or corrupt (checksum mismatch)", path)
    return None


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / "state.json").read_text())


def base_identity(init: str, checkpoints: Path, rows: list[int] | None = None, token_rows: list[int] = ()) -> dict:
    """What a LoRA run records as the base it adapts: the checkpoint it started from (relative to the checkpoints
    directory, with the sha256 of its checksums.json, which hashes every file of it), or model.init's import
    (its spec under its format's prefix, "hf" or "gguf", its files' hashes and the rows set to the mean:
    tasks/train/pretrained.py rebuilds it from them); and the rows it trains beside the adapters, which merging
    needs (absent when none, as before they trained)."""
    tokens = {"token_rows": sorted(token_rows)} if token_rows else {}
    if fmt := spec_format(str(init)):
        return {fmt: init, "files": pretrained.identity(init), "rows": rows or [], **tokens}
    return {"checkpoint": str(Path(init).resolve().relative_to(Path(checkpoints).resolve())),
            "sha256": sha256_file(Path(init) / "checksums.json"), **tokens}


def _load_base(model: nn.Module, path: Path, base: dict) -> None:
    """The base of LoRA checkpoint `path` into `model`, refused if it is gone or no longer what it was."""
    if spec := next((base[fmt] for fmt in FORMATS if fmt in base), None):
        if pretrained.identity(spec) != base["files"]:
            raise InputError(f"{path} holds LoRA adapters of {spec}, whose files changed; restore them, "
                             "or retrain this phase")
        pretrained.load(model, spec, base["rows"])
        return
    where = path.parent.parent / base["checkpoint"]
    if not (where / "checksums.json").exists() or sha256_file(where / "checksums.json") != base["sha256"]:
        raise InputError(f"{path} holds LoRA adapters of {where}, which is gone or changed; restore it, or "
                         "retrain this phase")
    load_weights(model, where)  # a base may itself be a LoRA run's (sft adapters on a LoRA full run)


def load_weights(model: nn.Module, path: Path) -> None:
    """The whole model in checkpoint `path` into `model`: its weights (an fsdp run's DCP shards, gathered), or
    (a LoRA checkpoint) its base's with its adapters merged."""
    path = Path(path)
    inputs = read_state(path).get("inputs", {})
    if sharded.is_sharded(path):
        sharded.load_weights(model, path)
    elif "base" not in inputs:
        load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    else:
        _load_base(model, path, inputs["base"])
        lora.merge(model, inputs["recipe"]["lora"], path / "model.safetensors", inputs["base"].get("token_rows", []))


def load(path: Path, model: nn.Module, rank: int = 0) -> tuple[dict, dict]:
    """Load the weights into `model` (a LoRA run's model, with its base and adapters in place: the adapters);
    return (this rank's rng states, state). The optimizer states come after the model is wrapped
    (`load_optimizer`)."""
    path = Path(path)
    if lora.adapted(model):
        lora.load(model, path / "model.safetensors")
    else:
        load_weights(model, path)
    own = path / f"rng-{rank}.pt"
    rng = own if own.exists() else path / ("rng-0.pt" if sharded.is_sharded(path) else "rng.pt")
    return torch.load(rng, weights_only=True), read_state(path)


def load_optimizer(path: Path, model: nn.Module, optimizers) -> None:
    """Checkpoint `path`'s optimizer states into `optimizers` (tasks/train/optim.py) of `model` as it trains:
    fully_shard-ed for a DCP checkpoint (every rank calls), else as built."""
    if sharded.is_sharded(path):
        sharded.load_optimizer(path, model, optimizers.all)
    else:
        device = next(model.parameters()).device
        optimizers.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location=device, weights_only=True))


def latest_model(directory: Path, device: str | torch.device = "cpu",
                    tokenizer_dir: Path | None = None) -> tuple[Transformer, dict]:
    """The model in the latest valid checkpoint under `directory` (e.g. checkpoints/full), and its state.

    Given `tokenizer_dir`, a tokenizer other than the one the checkpoint was trained with is refused."""
    path = latest(Path(directory))
    if path is None:
        raise InputError(f"{directory}: no complete checkpoint; train first (`chatpipe train`)")
    state = read_state(path)
    if tokenizer_dir is not None and state["inputs"]["tokenizer"] != file_hash(tokenizer_dir):
        raise InputError(f"{tokenizer_dir}/tokenizer.json is not the tokenizer {path} was trained with "
                         "(sha256 differs); retrain, or restore that tokenizer")
    model = Transformer(ModelConfig.from_dict(state["inputs"]["model"])).to(device)
    load_weights(model, path)
    state["path"] = str(path)
    return model.eval(), state
