"""Export a model as one GGUF file that llama.cpp (and Ollama, LM Studio) loads: `model.gguf` in the bundle.

Why: people run small models with llama.cpp and hold them as GGUF files; an HF export alone leaves them a
conversion to do. The file is what llama.cpp's own converter writes for a Llama (or, with QK-norm, a
Qwen3) model, from our weights, tokenizer and chat format:

    general.architecture   llama | qwen3, with its <arch>.* shape keys
    tensors                token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm,
                           ffn_gate, ffn_up, ffn_down}, output_norm, output (absent when tied): the gguf
                           package's names (model/gguf.py tensor_names); a llama file's Q/K rows permuted into
                           llama.cpp's interleaved RoPE order (model/gguf.py permute)
    tensor types           1-D: F32; float 2-D: F16 or Q8_0 (`ftype`; a row length Q8_0's 32-blocks do not
                           divide falls back to F16, counted); a ternary model's BitLinear weights: TQ2_0 or
                           TQ1_0 (`ternary`), exact codes with the tensor's one scale repeated in every
                           256-block (as f16: the only rounding)
    tokenizer.ggml.*       model gpt2 (byte-level BPE): tokens in id order, types (CONTROL for special added
                           tokens), merges, `pre` (model/gguf.py pre_name: the llama.cpp name whose split equals ours),
                           bos/eos/pad ids, the other stop tokens as eot/eom (llama.cpp ends generation on them),
                           add_bos false (our prompts carry none)
    tokenizer.chat_template  the run's chat format's (ours, or the pretrained model's own)

Refused in one line (`unsupported`): MoE; a pre-tokenizer llama.cpp has no name for (its tokens would differ
silently); a ternary linear whose row length is not a multiple of 256 (TQ2_0/TQ1_0's block), naming the tensor.
The file is written under a temp name and renamed, so a partial file is never taken as the model.
llama.cpp's logits on our files are checked against ours in tests/publish/test_gguf_export.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from chatpipe.kernels.ternary_codes import unpack_ternary
from chatpipe.model import gguf as gguf_in
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.common.bundle import generation_config
from chatpipe.tasks.common.hashing import sha256_file

FLOAT_TYPES = {"f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}  # ftype -> tensor, file type
TERNARY_TYPES = {"tq2_0": ("TQ2_0", "MOSTLY_TQ2_0"), "tq1_0": ("TQ1_0", "MOSTLY_TQ1_0")}
TERNARY_BLOCK = 256  # TQ2_0 and TQ1_0 hold rows in blocks of 256 weights
def _ternary(model: Transformer) -> dict[str, torch.nn.Module]:
    """The model's ternary linears (BitLinear, or a served TernaryLinear) by parameter name of their weight."""
    return {f"{n}.weight": m for n, m in model.named_modules() if hasattr(m, "packed")}


def unsupported(model: Transformer, tokenizer: Tokenizer) -> str | None:
    """Why `model` with this tokenizer cannot go out as GGUF (None if it can): one line, naming the tensor."""
    if model.config.moe is not None:
        return "MoE models have no exact llama.cpp equivalent (capacity-based token dropping)"
    spec = json.loads(tokenizer.to_str())
    if gguf_in.pre_name(spec) is None:
        return (f"the tokenizer's pre-tokenizer {json.dumps(spec.get('pre_tokenizer'))[:120]} has no llama.cpp "
                f"equivalent (known: {', '.join(gguf_in.PRE_TOKENIZERS)}), so llama.cpp would tokenize otherwise")
    names = gguf_in.tensor_names(_arch(model), model.config.n_layer, list(_ternary(model)))
    for ours, m in _ternary(model).items():
        if m.in_features % TERNARY_BLOCK:
            return (f"tensor {names[ours]} has rows of {m.in_features} weights; llama.cpp's ternary types hold "
                    f"rows in blocks of {TERNARY_BLOCK} (a model {TERNARY_BLOCK}-wide, or a multiple, exports)")
    return None


def _arch(model: Transformer) -> str:
    return "qwen3" if model.config.qk_norm else "llama"


def _tokenizer(writer, tok: Tokenizer, chat, vocab_size: int) -> None:
    """tokenizer.ggml.* and the chat template, from the tokenizer and the chat format."""
    gguf = gguf_in._gguf()
    spec = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise ValueError(f"the tokenizer has {n} tokens, the model's embedding {vocab_size} rows")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # ids the tokenizer does not use: UNUSED, as the converter
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for i, added in tok.get_added_tokens_decoder().items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(gguf_in.pre_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    special = {k: tok.token_to_id(v) for k, v in chat.special.items() if isinstance(v, str) and tok.token_to_id(v) is not None}
    eos = special.get("eos_token")
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id), ("unk_token", writer.add_unk_token_id)):
        if key in special:
            add(special[key])
    stops = [i for t in generation_config(chat)["stop"] if (i := tok.token_to_id(t)) is not None and i != eos]
    for add, i in zip((writer.add_eot_token_id, writer.add_eom_token_id), dict.fromkeys(stops)):
        add(i)  # llama.cpp stops on eos, eot and eom: ours ends a turn on <|user|> or <|system|> too
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat.template)


def _shape_keys(writer, model: Transformer) -> None:
    c = model.config
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.ffn_hidden)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)


def _tensors(writer, model: Transformer, ftype: str, ternary: str) -> dict[str, int]:
    """Every tensor under its GGUF name and type; returns how many of each type were written."""
    gguf = gguf_in._gguf()
    c, arch = model.config, _arch(model)
    qtype = getattr(gguf.GGMLQuantizationType, FLOAT_TYPES[ftype][0])
    ttype = getattr(gguf.GGMLQuantizationType, TERNARY_TYPES[ternary][0])
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    linears = _ternary(model)
    state = {**dict(model.named_parameters()), **linears}  # a tied head is one parameter: tok_emb.weight
    names = gguf_in.tensor_names(arch, c.n_layer, list(state))
    heads = {"attn.wq.weight": c.n_head, "attn.wk.weight": c.n_kv_heads} if arch == "llama" else {}
    counts: dict[str, int] = {}
    for ours, tensor in state.items():
        if ours in linears:
            w = unpack_ternary(*linears[ours].packed()).numpy()
        else:
            w = tensor.detach().to("cpu", torch.float32).numpy()
        if (n := heads.get(ours.split(".", 2)[-1])) is not None:
            w = gguf_in.permute(w, n)
        kind = (ttype if ours in linears else gguf.GGMLQuantizationType.F32 if w.ndim == 1
                else qtype if w.shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16)
        data = w.astype(np.float32) if kind == gguf.GGMLQuantizationType.F32 else \
            w.astype(np.float16) if kind == gguf.GGMLQuantizationType.F16 else gguf.quants.quantize(w, kind)
        writer.add_tensor(names[ours], data, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    return counts


def export(model: Transformer, tokenizer: Tokenizer, chat, path: Path, ftype: str = "f16", ternary: str = "tq2_0",
           name: str = "chat-pipeline") -> dict:
    """Write `path` (under a temp name, then renamed) as llama.cpp's GGUF of `model`, its tokenizer and chat
    format (tasks/chat/formats.py); see the module docstring.

    Returns what was written: file, bytes, sha256, arch, type (the linears': F16, Q8_0, TQ2_0 or TQ1_0) and
    the count of tensors of each type."""
    gguf = gguf_in._gguf()
    if ftype not in FLOAT_TYPES or ternary not in TERNARY_TYPES:
        raise ValueError(f"gguf types: ftype {ftype!r} (one of {', '.join(FLOAT_TYPES)}), "
                         f"ternary {ternary!r} (one of {', '.join(TERNARY_TYPES)})")
    if why := unsupported(model, tokenizer):
        raise ValueError(f"cannot export to GGUF: {why}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    arch = _arch(model)
    quantized = model.config.quant is not None
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(name)
        kind, file_type = TERNARY_TYPES[ternary] if quantized else FLOAT_TYPES[ftype]
        writer.add_file_type(getattr(gguf.LlamaFileType, file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _shape_keys(writer, model)
        _tokenizer(writer, tokenizer, chat, model.config.vocab_size)
        counts = _tensors(writer, model, ftype, ternary)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest, "arch": arch, "type": kind,
            "types": counts}


def export_dir(model: Transformer, tokenizer_dir: Path, path: Path, **kw) -> dict:
    """export() with the tokenizer and chat format of a tokenizer stage's (or a bundle's) directory."""
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    return export(model, tokenizer, formats.load(tokenizer_dir, tokenizer), path, **kw)
