"""Hugging Face checkpoints of LlamaForCausalLM and Qwen3ForCausalLM, read into our Transformer.

Why this exists: to start from a pretrained model instead of random weights (`model.init: hf:<dir or id>`)
and to size one (`chatpipe model-info hf:<dir>`); model/checkpoints.py picks this module for `hf:` and
model/gguf.py for `gguf:` files, both with the same functions. Our transformer is LLaMA's architecture under other
parameter names (tasks/publish/hf_export.py writes the same checkpoints), so an import is a renaming: one
table, NAMES, serves both directions. Qwen3 is LLaMA plus QK-norm and an explicit head_dim (Qwen3-0.6B:
1024 wide, 16 heads of 128), which ModelConfig carries as head_dim.

Anything whose computation we do not reproduce is refused in one line naming the config field: RoPE
scaling (Llama 3.1+'s "llama3", YaRN, ...), biases, activations other than SiLU, sliding-window layers,
quantized weights, other architectures. Only safetensors are read (one file or sharded with an index).
The config is read as plain JSON: this module needs no transformers, only safetensors (and huggingface_hub
for hub ids). The tokenizer is its tokenizer.json, with the chat template and special tokens of
tokenizer_config.json (or chat_template.jinja).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .config import ModelConfig
from .transformer import Transformer

# Our parameter name -> the HF one; "{i}" is the layer index.
NAMES = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attn.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.attn.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blocks.{i}.attn.k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blocks.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.mlp.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",  # gate
    "blocks.{i}.mlp.w3.weight": "model.layers.{i}.mlp.up_proj.weight",    # up
    "blocks.{i}.mlp.w2.weight": "model.layers.{i}.mlp.down_proj.weight",  # down
}
_HF_TO_OURS = {hf: ours for ours, hf in NAMES.items()}
_INDEX = re.compile(r"(?<=\.)\d+(?=\.)")

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}  # model_type -> the one we read
_DEFAULT_CONTEXT = {"llama": 2048, "qwen3": 32768}  # transformers' defaults, for a config.json without one
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]  # config, weights, tokenizer and
# its chat template; no .bin/.gguf
USAGE = "hf:<dir or org/name>"
# Our ModelConfig field -> where the checkpoint says it (model.init's shape keys: tasks/common/config.py INIT_FIELDS).
FIELDS = {key: f"config.json {field}" for key, field in {
    "n_layer": "num_hidden_layers", "n_embd": "hidden_size", "n_head": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "ffn_hidden": "intermediate_size",
    "block_size": "max_position_embeddings", "qk_norm": "model_type", "tie_embeddings": "tie_word_embeddings",
    "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps"}.items()}
SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")  # the special tokens read_tokenizer names


def _rename(name: str, table: dict[str, str]) -> str | None:
    """`name` through `table`, the first dotted number standing for {i}; None when the table lacks it."""
    m = _INDEX.search(name)
    key = name if m is None else f"{name[:m.start()]}{{i}}{name[m.end():]}"
    target = table.get(key)
    return target if target is None or m is None else target.format(i=m.group())


def hf_name(name: str) -> str:
    """The HF name of our parameter `name` (e.g. blocks.3.mlp.w1.weight -> model.layers.3.mlp.gate_proj.weight)."""
    if (hf := _rename(name, NAMES)) is None:
        raise ValueError(f"{name}: no Hugging Face name (only dense float models map onto Llama/Qwen3)")
    return hf


def our_name(hf: str) -> str | None:
    """Our name of the HF parameter `hf`; None for a tensor we have no place for."""
    return _rename(hf, _HF_TO_OURS)


# ---------------------------------------------------------------- where a checkpoint is

def resolve(spec: str) -> Path:
    """"hf:<local dir>" -> that dir; "hf:<org>/<name>" -> its huggingface_hub snapshot (config, safetensors,
    tokenizer files), from the local cache when offline."""
    if not spec.startswith("hf:") or not spec[3:]:
        raise ValueError(f"{spec!r}: expected hf:<local dir> or hf:<org>/<name>")
    ref = spec[3:]
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ValueError(f"{spec}: no such directory (and not a hub id <org>/<name>)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        return Path(snapshot_download(ref, allow_patterns=_WEIGHT_PATTERNS))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise ValueError(f"{spec}: not a local directory and the hub is unreachable (offline): download it first, "
                         f"e.g. `hf download {ref}`, then use hf:<that dir> ({type(e).__name__})") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{spec}: no such model on the hub (or it is private or gated: log in with `hf auth login`)") \
            from None


def files(path: Path) -> list[Path]:
    """What the import is made of (its identity, hashed by tasks/train/pretrained.py): config.json and the
    safetensors files."""
    return [Path(path) / "config.json", *sorted(Path(path).glob("*.safetensors"))]


# ---------------------------------------------------------------- config.json -> ModelConfig

def read_config(path: Path) -> ModelConfig:
    """The ModelConfig of the LlamaForCausalLM / Qwen3ForCausalLM checkpoint in `path` (its config.json)."""
    file = Path(path) / "config.json"
    try:
        hf = json.loads(file.read_text())
    except FileNotFoundError:
        raise ValueError(f"{file}: not found (not a Hugging Face checkpoint directory)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    kind = hf.get("model_type")

    def refuse(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{file}: {field}={json.dumps(hf.get(field))} is not supported: {why}")

    refuse(kind in ARCHITECTURES, "model_type", f"only {' and '.join(ARCHITECTURES)} checkpoints are read")
    refuse(hf.get("architectures") in (None, [ARCHITECTURES[kind]]), "architectures",
           f"a {kind} checkpoint is read as {ARCHITECTURES[kind]}")
    refuse(hf.get("rope_scaling") is None, "rope_scaling", "only plain RoPE is implemented")
    refuse(hf.get("attention_bias") in (None, False), "attention_bias", "our linears have no biases")
    refuse(hf.get("mlp_bias") in (None, False), "mlp_bias", "our linears have no biases")
    refuse(hf.get("hidden_act", "silu") == "silu", "hidden_act", "our MLP is SwiGLU (silu)")
    refuse(not hf.get("use_sliding_window"), "use_sliding_window", "every layer here is full attention")
    refuse(all(t == "full_attention" for t in hf.get("layer_types") or []), "layer_types",
           "every layer here is full attention")
    refuse(hf.get("quantization_config") is None, "quantization_config", "only float weights are read")
    rope = hf.get("rope_parameters") or {}  # transformers >= 5: {rope_theta, rope_type}
    refuse(not rope or (rope.get("rope_type", "default") == "default" and "rope_theta" in rope), "rope_parameters",
           "only plain RoPE (rope_type default) is implemented")
    n_head, width = hf["num_attention_heads"], hf["hidden_size"]
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=width, n_head=n_head,
            block_size=hf.get("max_position_embeddings") or _DEFAULT_CONTEXT[kind],
            n_kv_heads=hf.get("num_key_value_heads") or n_head, qk_norm=kind == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            head_dim=hf.get("head_dim") or width // n_head, ffn_hidden=hf["intermediate_size"])
    except KeyError as e:
        raise ValueError(f"{file}: {e.args[0]} is missing") from None
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


# ---------------------------------------------------------------- safetensors -> our weights

def _weight_files(path: Path) -> list[Path]:
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.exists():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if single.exists():
        return [single]
    raise ValueError(f"{path}: no model.safetensors or model.safetensors.index.json (only safetensors are read)")


def _listed(names, limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_complete(path: Path, missing: list[str], unexpected: list[str]) -> None:
    """A load is strict: the checkpoint's names the model needs but did not get, and those it has no place for,
    in one line (a few of each)."""
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model: "
                         + "; ".join(f"{what} {_listed(names)}" for what, names in
                                     (("missing", missing), ("unexpected", unexpected)) if names))


@torch.no_grad()
def load_weights(model: Transformer, path: Path) -> None:
    """Copy the checkpoint's tensors in `path` into `model` (converted to each parameter's dtype and device).

    Strict: a tensor the model lacks, or a parameter the checkpoint lacks, is an error naming them. With tied
    embeddings an lm_head.weight in the checkpoint is ignored (the head is the embedding), as transformers does;
    so are old checkpoints' rotary_emb.inv_freq buffers (computed, not learned).
    """
    from safetensors import safe_open

    if model.config.moe is not None or model.config.quant is not None:
        raise ValueError("load_weights: only dense float models map onto Llama/Qwen3 (no moe, no quant)")
    params = dict(model.named_parameters())  # a tied head appears once, as tok_emb.weight
    missing, unexpected = set(params), []
    for file in _weight_files(Path(path)):
        with safe_open(str(file), framework="pt") as f:
            for hf in f.keys():
                ours = our_name(hf)
                if hf.endswith("rotary_emb.inv_freq") or (ours == "lm_head.weight" and model.config.tie_embeddings):
                    continue
                if ours not in params:
                    unexpected.append(hf)
                    continue
                tensor, p = f.get_tensor(hf), params[ours]
                if tensor.shape != p.shape:
                    raise ValueError(f"{file}: {hf} has shape {tuple(tensor.shape)}, the model expects "
                                     f"{tuple(p.shape)} for {ours}")
                p.copy_(tensor)
                missing.discard(ours)
    check_complete(path, [hf_name(n) for n in missing], unexpected)


# ---------------------------------------------------------------- the tokenizer

def _json(file: Path) -> dict:
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None


def read_tokenizer(path: Path):
    """(tokenizers.Tokenizer, info) of the checkpoint in `path`: its tokenizer.json; info holds the
    chat_template (chat_template.jinja beside it, as transformers 5 writes, else tokenizer_config.json's, else
    None), the SPECIAL tokens' strings (tokenizer_config.json's, a string or an AddedToken dict; None where
    unset) and `file`, what was read."""
    from tokenizers import Tokenizer

    file, config = Path(path) / "tokenizer.json", _json(Path(path) / "tokenizer_config.json")
    if not file.is_file():
        raise ValueError(f"{file}: not found (transformers' fast tokenizer file)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ValueError(f"{file}: not a tokenizers file ({(str(e).splitlines() or ['unreadable'])[0]})") from None
    template = config.get("chat_template")
    if (jinja := Path(path) / "chat_template.jinja").is_file():
        template = jinja.read_text()
    elif isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    special = {name: value.get("content") if isinstance(value, dict) else value
               for name, value in ((name, config.get(name)) for name in SPECIAL)}
    return tok, {"chat_template": template, **special, "file": file}
