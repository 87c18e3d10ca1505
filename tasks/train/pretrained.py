"""`model.init: hf:<dir or hub id>` or `gguf:<file or short name>`: a run that starts from a pretrained
Llama/Qwen3 checkpoint (model/checkpoints.py reads either format: model/hf.py, model/gguf.py).

Why a module: an import decides three things together, and they must agree — the shape (the checkpoint's
config.json or GGUF metadata, never the preset; a shape key the params set must say the same; block_size is
the context trained at, at most the checkpoint's context), the vocabulary (the adopted
tokenizer's, tasks/tokens/tokenizer.py, with our chat markers added: the model grows rows when the markers lie
beyond the checkpoint's vocab_size) and the weights (its format's load_weights, then the rows of every added
marker set to the mean of the checkpoint's other rows: a marker inside a padded vocabulary, such as Qwen3's
151,936 rows for 151,669 ids, has a row that was never trained either). The import's identity (the sha256 of
each file it is made of: config.json and the safetensors, or the GGUF file) is one of a run's inputs, so a
changed checkpoint is not resumed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from chatpipe.model import checkpoints
from chatpipe.model.config import FieldError, ModelConfig, MoEConfig, ffn_hidden
from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common.config import INIT_FIELDS, Params
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.hashing import sha256_file
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.tokens.artifact import chat_markers


def checkpoint_dir(spec: str) -> Path:
    """The local directory or file model.init names."""
    try:
        return checkpoints.resolve(spec)
    except ValueError as e:
        raise ConfigError(f"params: model.init: {e}") from None


def _read(spec: str) -> ModelConfig:
    checkpoint_dir(spec)
    try:
        return checkpoints.read_config(spec)
    except ValueError as e:
        raise ConfigError(f"params: model.init: {e}") from None


def imported_config(params: Params, vocab_size: int) -> ModelConfig:
    """The checkpoint's shape, trained at model.block_size, with the vocabulary grown to `vocab_size` if larger."""
    m, spec = params.model, params.model.init
    if params.tokenizer.from_ is None:
        raise ConfigError(f"params: model.init: {spec} needs its own tokenizer: set tokenizer.from (e.g. to {spec}); "
                          f"a BPE trained here has other ids")
    theirs, fields = _read(spec), checkpoints.fields(spec)
    for key in INIT_FIELDS:  # model.init takes no other shape key (tasks/common/config.py)
        if (mine := getattr(m, key)) is not None and mine != (value := getattr(theirs, key)):
            raise ConfigError(f"params: model.{key}: {mine} contradicts {spec}, whose {key} is {value} "
                              f"({fields[key]}); with model.init the shape is the checkpoint's")
    if m.ffn_mult is not None and (width := ffn_hidden(m.ffn_mult, theirs.n_embd, theirs.multiple_of)) != theirs.ffn_hidden:
        raise ConfigError(f"params: model.ffn_mult: {m.ffn_mult} gives an MLP width of {width}, {spec}'s is "
                          f"{theirs.ffn_hidden} ({fields['ffn_hidden']}); with model.init the shape is the checkpoint's")
    block = theirs.block_size if m.block_size is None else m.block_size
    if block > theirs.block_size:
        raise ConfigError(f"params: model.block_size: {block} is longer than {spec}'s context "
                          f"({fields['block_size']} {theirs.block_size})")
    return dataclasses.replace(theirs, vocab_size=max(theirs.vocab_size, vocab_size), block_size=block, quant=m.quant,
                               ternary=m.ternary and m.ternary.model_dump())


def model_config(params: Params, vocab_size: int, student: dict | None = None, key: str = "model") -> ModelConfig:
    """The shape a phase trains: the preset with the model section's keys (random init), or model.init's
    checkpoint (`imported_config`); `student`'s keys on top (the distill student's overrides)."""
    student = dict(student or {})
    try:
        if not params.model.init:
            return preset(params.model.preset, vocab_size=vocab_size, **{**params.model.overrides(), **student})
        if isinstance(student.get("moe"), dict):
            student["moe"] = MoEConfig.from_dict(student["moe"])
        return dataclasses.replace(imported_config(params, vocab_size), **student)
    except FieldError as e:
        raise ConfigError(f"params: {key}.{e.field}: {e.why}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"params: {key}: {e}") from None


def identity(spec: str) -> dict[str, str]:
    """What the import is, by content: the sha256 of each file it is made of (config.json and each safetensors
    file, or the GGUF file), by file name (not the path)."""
    checkpoint_dir(spec)
    return {f.name: sha256_file(f) for f in checkpoints.files(spec)}


def init(model: Transformer, params: Params, layout: Layout) -> list[int]:
    """Load model.init's checkpoint into `model` (`load`); the ids whose rows were set to the mean: the chat markers
    the tokenizer stage added, and any row beyond the checkpoint's vocab_size."""
    spec = params.model.init
    markers = chat_markers(layout.tokenizer)
    if markers is None:
        raise InputError(f"{layout.tokenizer}: not adopted from a checkpoint, but model.init is {spec}: "
                         f"run `chatpipe tokenizer` with tokenizer.from set")
    rows = sorted({*markers["added"].values(), *range(_read(spec).vocab_size, model.config.vocab_size)})
    load(model, spec, rows)
    return rows


@torch.no_grad()
def load(model: Transformer, spec: str, rows: list[int]) -> None:
    """The checkpoint's weights into `model` (whose vocabulary may be larger), then `rows` of the embedding and
    of an untied LM head set to the mean of the checkpoint's other rows. Deterministic: the same call gives the
    same weights (what a run started from can be rebuilt from `spec` and `rows`)."""
    n = _read(spec).vocab_size
    try:
        if model.config.vocab_size == n:
            checkpoints.load_weights(model, spec)
        else:  # the checkpoint's rows, then ours beyond them
            base = Transformer(dataclasses.replace(model.config, vocab_size=n))
            checkpoints.load_weights(base, spec)
            theirs = dict(base.named_parameters())
            for name, p in model.named_parameters():
                (p[:n] if name in ("tok_emb.weight", "lm_head.weight") else p).copy_(theirs[name])
            del base, theirs
    except ValueError as e:
        raise InputError(f"model.init {spec}: {e}") from None
    if rows:
        trained = torch.ones(n, dtype=torch.bool)
        trained[[r for r in rows if r < n]] = False
        for w in {id(w): w for w in (model.tok_emb.weight, model.lm_head.weight)}.values():  # once when tied
            w[rows] = w[:n][trained.to(w.device)].mean(0)
