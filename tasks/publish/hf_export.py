"""Export a dense model as a Hugging Face checkpoint that `transformers` loads with no custom code.

Why it is a renaming and never a permutation: our transformer is LLaMA's architecture under other names
(pre-norm RMSNorm, RoPE in HF's rotate-half layout, GQA, SwiGLU with w1 = gate, w3 = up, w2 = down, no
biases), and with QK-norm it is Qwen3's. model/hf.py's NAMES serves export and import;
`AutoModelForCausalLM.from_pretrained(dir)` gives our logits (tests/publish/test_hf_export.py). MoE models
are not exported: our experts drop tokens beyond a capacity, HF's do not.

    config.json              LlamaConfig / Qwen3Config (architectures, dtype float32, bos/eos ids)
    model.safetensors        HF parameter names
    tokenizer.json           our BPE tokenizer, unchanged
    tokenizer_config.json    PreTrainedTokenizerFast, the chat format's special tokens and chat_template (ours,
                             or the pretrained model's own: tasks/chat/formats.py)
    special_tokens_map.json
    generation_config.json   sampling defaults; every stop marker is an eos id

The tokenizer files are plain JSON (not transformers' save_pretrained), so older transformers read them too.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from chatpipe.model.hf import hf_name
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import formats
from chatpipe.tasks.chat.format import HF_SPECIAL_TOKENS
from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.bundle import generation_config


def unsupported(model: Transformer) -> str | None:
    """Why this model cannot be exported (None if it can)."""
    if model.config.moe is not None:
        return "MoE models have no exact transformers equivalent (capacity-based token dropping)"
    if model.config.quant is not None:
        return f"{model.config.quant} weights and int8 activations have no transformers Llama equivalent"
    return None


def architecture(model: Transformer) -> str:
    return "Qwen3ForCausalLM" if model.config.qk_norm else "LlamaForCausalLM"


def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our weights under HF names (float32, contiguous); a tied LM head is left out, as HF expects."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return {hf_name(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def hf_config(model: Transformer, stop_ids: list[int], bos_id: int):
    from transformers import LlamaConfig, Qwen3Config

    c = model.config
    common = dict(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.ffn_hidden,
                  num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_heads,
                  head_dim=c.head_dim, max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
                  rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings, hidden_act="silu",
                  attention_bias=False, bos_token_id=bos_id, eos_token_id=stop_ids[0],
                  pad_token_id=stop_ids[0], architectures=[architecture(model)], dtype="float32")
    if c.qk_norm:
        return Qwen3Config(**common, use_sliding_window=False)
    return LlamaConfig(**common, mlp_bias=False)


def write_tokenizer(tokenizer_dir: Path, chat, out: Path, max_length: int) -> None:
    special = HF_SPECIAL_TOKENS if chat.name == "ours" else chat.special
    shutil.copy(Path(tokenizer_dir) / "tokenizer.json", out / "tokenizer.json")
    atomic.write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "chat_template": chat.template,
        "model_max_length": max_length, "clean_up_tokenization_spaces": False})
    atomic.write_json(out / "special_tokens_map.json", special)


def export(model: Transformer, tokenizer_dir: Path, out_dir: Path, generation: dict | None = None) -> Path:
    """Write `out_dir` (atomically) as a transformers checkpoint of `model`; see the module docstring."""
    from tokenizers import Tokenizer
    from transformers import GenerationConfig

    if why := unsupported(model):
        raise ValueError(f"cannot export to transformers: {why}")
    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    chat = formats.load(tokenizer_dir, tokenizer)
    gen = generation_config(chat, generation)
    stop_ids = [i for t in (chat.special["eos_token"], *gen["stop"]) if (i := tokenizer.token_to_id(t)) is not None]
    stop_ids = list(dict.fromkeys(stop_ids))  # the eos first: with ours, <|endoftext|> is the bos/eos/pad id
    bos_id = tokenizer.token_to_id(chat.special.get("bos_token") or chat.special["eos_token"])
    with atomic.atomic_dir(Path(out_dir)) as tmp:
        hf_config(model, stop_ids, bos_id).save_pretrained(tmp)
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_tokenizer(tokenizer_dir, chat, tmp, model.config.block_size)
        GenerationConfig(bos_token_id=bos_id, eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                         do_sample=True, temperature=gen["temperature"], top_p=gen["top_p"],
                         top_k=gen["top_k"], max_new_tokens=gen["max_new_tokens"]).save_pretrained(tmp)
    return Path(out_dir)
