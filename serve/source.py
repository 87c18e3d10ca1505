"""Where a served model comes from: a bundle directory, a published gs:// one, or a pretrained checkpoint.

`chatpipe serve` and `chatpipe chat` take `--model dist/<name>` (loaded and checksum-verified by
tasks/common/bundle.py), `--model gs://bucket/prefix/<name>` (downloaded once into the local cache by
tasks/publish/publish.py, which checks the publish marker and the checksums, then loaded the same way), or
`--model gguf:<file or short name>` / `hf:<dir>` (model/checkpoints.py): a pretrained model as it is, on its
own chat template, so a fine-tune and the model it started from answer the same client.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from chatpipe.model import checkpoints
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import ConfigError, InputError


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chat-pipeline" / "models"


def device(requested: str) -> torch.device:
    """`auto` (cuda if available, else cpu), `cpu`, `cuda` or `cuda:N`."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested}: not a device (auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
    return chosen


def open_bundle(model: str, requested_device: str = "auto") -> bundle.Bundle:
    """The bundle named by `model` (a directory, a gs:// URI or a checkpoint spec), loaded for inference."""
    if checkpoints.prefix(model):
        return pretrained(model, device(requested_device))
    if model.startswith("gs://"):
        from chatpipe.tasks.publish.publish import download

        path = download(model, cache_dir())
    else:
        path = Path(model)
    return bundle.load(path, device(requested_device))


def pretrained(spec: str, on: torch.device) -> bundle.Bundle:
    """A pretrained checkpoint served as it is: its weights, its tokenizer and its chat template (ours when it has
    none but our markers), named after its file or directory."""
    try:
        path = checkpoints.resolve(spec)
        model = Transformer(checkpoints.read_config(spec))
        checkpoints.load_weights(model, spec)
        tokenizer, info = checkpoints.read_tokenizer(spec)
    except ValueError as e:
        raise InputError(f"--model {spec}: {e}") from None
    if info.get("chat_template"):
        special = {k: info.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        chat = formats.Template(tokenizer, formats.template_record(info["chat_template"], special, tokenizer, spec))
    else:
        chat = formats.Ours(tokenizer)  # one line when it lacks our markers too
    return bundle.Bundle(path, path.stem if path.is_file() else path.name, model.config, model.to(on).eval(),
                         tokenizer, bundle.generation_config(chat), chat)
