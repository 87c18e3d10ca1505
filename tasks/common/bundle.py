"""A model bundle: the one directory that leaves the pipeline (`dist/<name>/`).

Publishing writes it, `chatpipe serve` and `chatpipe chat` read it, GCS stores it. It holds everything
needed to run the model and nothing else:

    model.safetensors        weights, our parameter names (model/transformer.py); a tied matrix once
    config.json              {"format": "chat-pipeline", "version": 1, "model": ModelConfig fields}
    tokenizer.json           the BPE tokenizer (tokenizers / transformers PreTrainedTokenizerFast)
    chat_format.json         the chat format it was trained on (tasks/chat/formats.py; ours when absent)
    generation_config.json   default sampling params and the stop markers (the chat format's)
    README.md                the model card
    ...                      anything else publish adds (hf/ export, eval.json, lineage.json)
    checksums.json           sha256 of every other file, written last

`write` builds it in a temp sibling and renames it, so a bundle directory is whole or absent; `load`
refuses one whose checksums do not hold, naming the file. Training checkpoints are read with
tasks/train/checkpoint.py's `latest_model` (eval runs before there is a bundle).

A ternary model's (`config.quant == "ternary"`) block linears are stored packed at 2 bits per weight,
as model/quant.py's `packed_state_dict` writes them (`<name>.weight` uint8 codes, 4 to a byte, plus
`<name>.weight_scale` and `<name>.weight_shape`); embeddings, norms and the head stay float. `load`
reads them into integer linears (model/ternary_linear.py `load_ternary`: codes as the device's kernel
reads them, no float weights): the loaded model computes what the packed one did, for inference only
(training code reads checkpoints, not bundles). `weights_bytes` is the size of the weights file `write`
stores for a model.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from tokenizers import Tokenizer

from chatpipe.model.config import ModelConfig
from chatpipe.model.quant import packed_state_dict
from chatpipe.model.ternary_linear import load_ternary
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.chat.turns import DEFAULT_GENERATION
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.errors import InputError
from chatpipe.tasks.common.hashing import sha256_file

FORMAT, VERSION = "chat-pipeline", 1
Extra = bytes | Path | Callable[[Path], object]  # content, a file/dir to copy, or a writer of that path


@dataclass
class Bundle:
    path: Path
    name: str
    config: ModelConfig
    model: Transformer
    tokenizer: Tokenizer
    generation: dict
    chat: object = None  # its chat format (tasks/chat/formats.py): how a conversation is rendered for it

    @property
    def stop_ids(self) -> list[int]:
        return [i for t in self.generation["stop"] if (i := self.tokenizer.token_to_id(t)) is not None]


def write(directory: Path, model: Transformer, tokenizer_dir: Path, card: str,
          generation: dict | None = None, extra: dict[str, Extra] | None = None) -> Path:
    """Write the bundle atomically. `extra` maps relative paths to bytes, files/directories to copy, or
    functions that write that path (e.g. an export straight into the bundle, without a copy)."""
    directory = Path(directory)
    with atomic.atomic_dir(directory) as tmp:
        save_weights(model, tmp / "model.safetensors")
        atomic.write_json(tmp / "config.json", {"format": FORMAT, "version": VERSION,
                                                "model": model.config.to_dict()})
        shutil.copy(Path(tokenizer_dir) / "tokenizer.json", tmp / "tokenizer.json")
        if (Path(tokenizer_dir) / formats.FILE).exists():
            shutil.copy(Path(tokenizer_dir) / formats.FILE, tmp / formats.FILE)
        chat = formats.load(tokenizer_dir, Tokenizer.from_file(str(tmp / "tokenizer.json")))
        atomic.write_json(tmp / "generation_config.json", generation_config(chat, generation))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for rel, content in (extra or {}).items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif callable(content):
                content(target)
            elif Path(content).is_dir():
                shutil.copytree(content, target)
            else:
                shutil.copy(content, target)
        atomic.write_json(tmp / "checksums.json", checksums(tmp))
    return directory


def generation_config(chat, generation: dict | None = None) -> dict:
    """Default sampling and the stop tokens of the chat format `chat`, with `generation`'s keys on top."""
    return {**DEFAULT_GENERATION, "stop": list(chat.stop), **(generation or {})}


def save_weights(model: Transformer, path: Path) -> None:
    """The model's weights as safetensors: float as they are, a ternary model's block linears packed."""
    if model.config.quant is None:
        save_model(model, str(path))  # stores a tied matrix once
        return
    state = packed_state_dict(model)
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as tok_emb.weight (safetensors refuses shared ones)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def load_weights(model: Transformer, path: Path, device: str | torch.device = "cpu") -> None:
    """Inverse of save_weights, into a model of the same config (strict); a ternary model's block linears become
    TernaryLinears (inference only)."""
    if model.config.quant is None:
        load_model(model, str(path), device=str(device))
        return
    state = load_file(str(path), device=str(device))
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]  # the model's own tie makes them one again
    load_ternary(model, state)


def weights_bytes(model: Transformer) -> int:
    """The size in bytes of the model.safetensors that `write` stores for `model`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_weights(model, path)
        return path.stat().st_size


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` except checksums.json, by relative path."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "checksums.json"}


def digest(directory: Path) -> str:
    """One content hash for a whole bundle: the sha256 of its checksums.json, which lists every file's."""
    return sha256_file(Path(directory) / "checksums.json")


def verify(directory: Path, label: str | None = None) -> None:
    """Raise InputError naming the first file that is missing, extra or changed (the bundle as `label`)."""
    directory = Path(directory)
    label = label or str(directory)
    try:
        expected = json.loads((directory / "checksums.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"{label}: not a model bundle (no readable checksums.json); "
                         "publish one with `chatpipe publish`") from None
    actual = checksums(directory)
    for rel in sorted(set(expected) | set(actual)):
        if expected.get(rel) != actual.get(rel):
            what = "missing" if rel not in actual else "unexpected" if rel not in expected else "changed"
            raise InputError(f"{label}: {rel} is {what} (checksum mismatch); the bundle is incomplete "
                             "or was modified")


def load(directory: Path, device: str | torch.device = "cpu") -> Bundle:
    """Verify and load a bundle for inference (eval mode, on `device`)."""
    directory = Path(directory)
    verify(directory)
    meta = json.loads((directory / "config.json").read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{directory}/config.json: format {meta.get('format')!r} v{meta.get('version')} "
                         f"is not {FORMAT} v{VERSION}")
    config = ModelConfig.from_dict(meta["model"])
    model = Transformer(config).to(device)
    load_weights(model, directory / "model.safetensors", device)
    generation = json.loads((directory / "generation_config.json").read_text())
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return Bundle(directory, directory.name, config, model.eval(), tokenizer, generation,
                  formats.load(directory, tokenizer))
