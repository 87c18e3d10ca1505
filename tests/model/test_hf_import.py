"""Importing Llama / Qwen3 checkpoints (model/hf.py): tiny random ones that transformers builds and saves here.

Our Transformer with the imported weights must compute transformers' logits; what we cannot compute is refused
in one line naming the config field; the import and the export (tasks/publish/hf_export.py) are inverses.
"""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from typer.testing import CliRunner

from chatpipe.model.config import ModelConfig
from chatpipe.model.hf import NAMES, hf_name, load_weights, our_name, read_config, resolve
from chatpipe.model.info import param_counts
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.format import SPECIAL_TOKENS

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, vocab_size=300, max_position_embeddings=64, rms_norm_eps=1e-6)


def save_hf(path, kind="qwen3", tied=False, sharded=False, dtype=torch.float32, **extra):
    """A random LlamaForCausalLM / Qwen3ForCausalLM (norm gains perturbed too) saved to `path`; returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if kind == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    head = dict(head_dim=32) if kind == "qwen3" else {}  # Qwen3: 4 heads x 32 = 128 != hidden 64
    torch.manual_seed(0)
    model = model_cls(config_cls(**SHAPE, **head, tie_word_embeddings=tied, **extra)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.to(dtype).save_pretrained(path, max_shard_size="50KB" if sharded else "1GB")
    return model


def imported(path, dtype=torch.float32) -> Transformer:
    model = Transformer(read_config(path)).to(dtype).eval()
    load_weights(model, path)
    return model


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_imported_model_computes_transformers_logits(tmp_path, kind, tied, sharded):
    theirs = save_hf(tmp_path, kind, tied, sharded)
    assert (tmp_path / "model.safetensors.index.json").exists() == sharded
    ours = imported(tmp_path)
    c = ours.config
    assert (c.qk_norm, c.tie_embeddings, c.n_kv_heads, c.ffn_hidden, c.block_size) == (kind == "qwen3", tied, 2, 96, 64)
    assert c.head_dim == (32 if kind == "qwen3" else 16) and (ours.lm_head.weight is ours.tok_emb.weight) == tied
    assert param_counts(c)["total"] == sum(p.numel() for p in theirs.parameters())
    ids = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], theirs(input_ids=ids).logits, rtol=0, atol=1e-4)


def test_bf16_checkpoint_loads_into_the_models_dtype(tmp_path):
    theirs = save_hf(tmp_path, "qwen3", dtype=torch.bfloat16)
    for dtype in (torch.float32, torch.bfloat16):
        ours = imported(tmp_path, dtype)
        assert ours.blocks[1].mlp.w2.weight.dtype == dtype
        assert torch.equal(ours.blocks[1].mlp.w2.weight.bfloat16(), theirs.model.layers[1].mlp.down_proj.weight)


def test_rope_theta_from_either_place(tmp_path):
    save_hf(tmp_path, "llama", rope_theta=5e5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_theta": 5e5, "rope_type": "default"}  # transformers 5
    assert read_config(tmp_path).rope_theta == 5e5
    edit_config(tmp_path, rope_parameters=None, rope_theta=1e6, rope_scaling=None)  # transformers 4's config.json
    assert read_config(tmp_path).rope_theta == 1e6


@pytest.mark.parametrize("field, value", [
    ("rope_scaling", {"rope_type": "llama3", "factor": 32.0}),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}),
    ("attention_bias", True),
    ("mlp_bias", True),
    ("hidden_act", "gelu"),
    ("use_sliding_window", True),
    ("layer_types", ["full_attention", "sliding_attention"]),
    ("model_type", "qwen2"),
    ("architectures", ["Qwen3ForSequenceClassification"]),
    ("quantization_config", {"quant_method": "gptq"}),
])
def test_unsupported_configs_are_refused_in_one_line(tmp_path, field, value):
    save_hf(tmp_path, "qwen3")
    edit_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=f"config.json: {field}=.* is not supported") as e:
        read_config(tmp_path)
    assert "\n" not in str(e.value) and json.dumps(value) in str(e.value)


def test_missing_fields_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="config.json: not found"):
        read_config(tmp_path)
    save_hf(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    del config["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: intermediate_size is missing"):
        read_config(tmp_path)


def test_weights_must_match_the_model_exactly(tmp_path):
    from safetensors.torch import load_file, save_file

    save_hf(tmp_path, "qwen3")
    model = Transformer(read_config(tmp_path))
    file = tmp_path / "model.safetensors"
    good = load_file(file)
    save_file({k: v for k, v in good.items() if k != "model.layers.1.self_attn.k_norm.weight"}
              | {"model.layers.0.self_attn.q_proj.bias": torch.zeros(128)}, file)
    with pytest.raises(ValueError, match=r"missing model\.layers\.1\.self_attn\.k_norm\.weight; "
                                         r"unexpected model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_weights(model, tmp_path)
    save_file(good | {"model.norm.weight": torch.ones(32)}, file)
    with pytest.raises(ValueError, match=r"model\.norm\.weight has shape \(32,\), the model expects \(64,\)"):
        load_weights(model, tmp_path)
    file.unlink()
    with pytest.raises(ValueError, match="no model.safetensors or model.safetensors.index.json"):
        load_weights(model, tmp_path)


def test_names_go_both_ways():
    model = Transformer(ModelConfig(vocab_size=300, n_layer=2, n_embd=64, n_head=4, n_kv_heads=2, block_size=64,
                                    qk_norm=True, tie_embeddings=False, head_dim=32, ffn_hidden=96))
    for name, _ in model.named_parameters():
        assert our_name(hf_name(name)) == name
    assert hf_name("blocks.11.mlp.w1.weight") == "model.layers.11.mlp.gate_proj.weight"
    assert our_name("model.layers.3.self_attn.rotary_emb.inv_freq") is None and len(NAMES) == 14
    with pytest.raises(ValueError, match="blocks.0.mlp.router.weight"):
        hf_name("blocks.0.mlp.router.weight")


def test_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    assert resolve(f"hf:{tmp_path}") == tmp_path
    with pytest.raises(ValueError, match="no such directory"):
        resolve(f"hf:{tmp_path}/missing")
    with pytest.raises(ValueError, match=r"hf:Qwen/Qwen3-0\.6B: not a local directory and the hub is unreachable "
                                         r"\(offline\): download it first, e\.g\. `hf download Qwen/Qwen3-0\.6B`"):
        resolve("hf:Qwen/Qwen3-0.6B")
    with pytest.raises(ValueError, match="expected hf:<local dir>"):
        resolve(str(tmp_path))


def test_import_then_export_round_trips_through_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from chatpipe.tasks.publish import hf_export

    save_hf(tmp_path / "in", "qwen3", tied=True, sharded=True)
    ours = imported(tmp_path / "in")
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, "hello"])}
    Tokenizer(WordLevel(vocab, unk_token="hello")).save(str(tokenizer / "tokenizer.json"))
    out = hf_export.export(ours, tokenizer, tmp_path / "out")
    assert read_config(out) == ours.config
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours(ids)[0], rtol=0, atol=1e-4)


def test_model_info_cli_reads_a_checkpoint(tmp_path):
    from chatpipe.cli import app

    save_hf(tmp_path, "qwen3")
    result = CliRunner().invoke(app, ["model-info", f"hf:{tmp_path}", "--weights", "bf16", "--lora-rank", "4",
                                      "--activation-checkpointing", "--seq-len", "32"])
    assert result.exit_code == 0, result.output
    total = param_counts(read_config(tmp_path))["total"]
    assert f"hf:{tmp_path}: 2 layers x 64, 4 heads / 2 KV (head_dim 32), ffn 96" in result.stdout
    assert f"total {total / 1e3:.2f}K" in result.stdout and "batch 16 x 32, adamw, bf16" in result.stdout
    assert "LoRA rank 4 on wq,wk,wv,wo,w1,w2,w3" in result.stdout and "one block's input per layer" in result.stdout
    edit_config(tmp_path, rope_scaling={"rope_type": "yarn"})
    bad = CliRunner().invoke(app, ["model-info", f"hf:{tmp_path}"])
    assert bad.exit_code == 2 and "rope_scaling" in bad.stderr and "Traceback" not in bad.stderr


def test_the_tokenizer_with_its_chat_template_and_special_tokens(tmp_path):
    from chatpipe.model.hf import read_tokenizer

    with pytest.raises(ValueError, match=r"tokenizer\.json: not found \(transformers' fast tokenizer file\)$"):
        read_tokenizer(tmp_path)
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "hello"])}
    Tokenizer(WordLevel(vocab, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    tok, info = read_tokenizer(tmp_path)  # no tokenizer_config.json: nothing named
    assert tok.token_to_id("hello") == 3 and info == {"chat_template": None, "bos_token": None, "eos_token": None,
                                                      "pad_token": None, "unk_token": None,
                                                      "file": tmp_path / "tokenizer.json"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({  # transformers 4: AddedToken dicts, template inside
        "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>", "unk_token": "<unk>",
        "chat_template": "{{ messages }}"}))
    info = read_tokenizer(tmp_path)[1]
    assert (info["chat_template"], info["bos_token"], info["eos_token"], info["pad_token"], info["unk_token"]) == \
        ("{{ messages }}", "<s>", "</s>", None, "<unk>")
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")  # transformers 5:
    # its own file, which wins
    assert read_tokenizer(tmp_path)[1]["chat_template"] == "{% for m in messages %}{{ m.content }}{% endfor %}"
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a tokenizers file \(") as e:
        read_tokenizer(tmp_path)
    assert "\n" not in str(e.value)
