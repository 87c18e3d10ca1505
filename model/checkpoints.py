"""Pretrained checkpoints by the prefix of their spec: `hf:<dir or org/name>` (model/hf.py), `gguf:<file or short
name>` (model/gguf.py).

Why: model.init, tokenizer.from and `chatpipe model-info` take any of them, and each caller would otherwise
branch on the prefix. Every format module has the same functions (resolve, read_config, load_weights,
read_tokenizer, files) and constants (USAGE, FIELDS); these dispatch on the prefix, and a new format is one
more entry in FORMATS. tasks/common/config.py's CHECKPOINT_SPEC names the same prefixes without importing this
(loading params must not import torch); tests/model/test_gguf.py checks that they agree.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import gguf, hf
from .config import ModelConfig
from .transformer import Transformer

FORMATS: dict[str, ModuleType] = {"hf": hf, "gguf": gguf}
USAGE = ", ".join(module.USAGE for module in FORMATS.values())  # "hf:<dir or org/name>, gguf:<...>"


def prefix(spec: str) -> str | None:
    """The format `spec` names ("hf", "gguf"); None when it names none (a preset, a path)."""
    name, colon, _ = spec.partition(":")
    return name if colon and name in FORMATS else None


def format_of(spec: str) -> ModuleType:
    if (name := prefix(spec)) is None:
        raise ValueError(f"{spec!r}: not a checkpoint spec; known: {USAGE}")
    return FORMATS[name]


def resolve(spec: str) -> Path:
    """The local directory or file `spec` names (a hub id is downloaded, a short name found in its package)."""
    return format_of(spec).resolve(spec)


def read_config(spec: str) -> ModelConfig:
    return format_of(spec).read_config(resolve(spec))


def load_weights(model: Transformer, spec: str) -> None:
    format_of(spec).load_weights(model, resolve(spec))


def read_tokenizer(spec: str):
    """(tokenizers.Tokenizer, info): info holds chat_template, bos/eos/pad/unk_token (strings or None), file."""
    return format_of(spec).read_tokenizer(resolve(spec))


def files(spec: str) -> list[Path]:
    """The files the import is made of, whose hashes are its identity (tasks/train/pretrained.py)."""
    return format_of(spec).files(resolve(spec))


def fields(spec: str) -> dict[str, str]:
    """Our ModelConfig field -> where the checkpoint says it ("config.json num_hidden_layers", "llama.block_count")."""
    return format_of(spec).FIELDS
