"""The Hugging Face export: plain `transformers` (no custom code) must load it and compute what we compute."""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer

from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.generate import generate
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat import format as chat_format
from chatpipe.tasks.chat.format import STOP_MARKERS, Turn
from chatpipe.tasks.publish import hf_export
from chatpipe.tasks.train import checkpoint


def perturbed(config: ModelConfig) -> Transformer:
    """A random model whose norm gains are not all ones (so a misplaced norm would show)."""
    torch.manual_seed(0)
    model = Transformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("shape, architecture", [
    (dict(), "LlamaForCausalLM"),                                              # tied, MHA
    (dict(tie_embeddings=False, n_kv_heads=2, rope_theta=5e5), "LlamaForCausalLM"),  # untied, GQA
    (dict(tie_embeddings=False, n_kv_heads=1, qk_norm=True, norm_eps=1e-6), "Qwen3ForCausalLM"),
])
def test_transformers_computes_our_logits(built, tmp_path, shape, architecture):
    from transformers import AutoModelForCausalLM

    layout, _, _ = built
    vocab = Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json")).get_vocab_size()
    ours = perturbed(ModelConfig(vocab_size=vocab, n_layer=2, n_embd=64, n_head=4, block_size=32, **shape))
    out = hf_export.export(ours, layout.tokenizer, tmp_path / "hf")
    theirs, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(theirs).__name__ == architecture
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == ours.config.ffn_hidden and config["max_position_embeddings"] == 32
    assert config["tie_word_embeddings"] == ours.config.tie_embeddings and config["dtype"] == "float32"
    ids = torch.randint(0, vocab, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(input_ids=ids).logits, ours(ids)[0], rtol=0, atol=1e-4)


def test_tokenizer_chat_template_and_greedy_generation_match(trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout, _ = trained
    model, _ = checkpoint.latest_model(layout.checkpoints / "full")
    out = hf_export.export(model, layout.tokenizer, tmp_path / "hf")
    ours, theirs = Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json")), AutoTokenizer.from_pretrained(out)
    texts = ["<|user|> Hi there!\n<|assistant|> Hello, how are you?\n<|endoftext|>",
             "def add(a, b):\n    return a + b  # café ☕\n", "  leading spaces\tand tabs"]
    for text in texts:
        assert theirs(text)["input_ids"] == ours.encode(text).ids
        assert theirs.decode(theirs(text)["input_ids"]) == text
    assert theirs.eos_token == "<|endoftext|>" and theirs.eos_token_id == 0
    turns = [Turn("system", "Be brief."), Turn("user", "Hi!"), Turn("assistant", "Hello."), Turn("user", "Bye?")]
    messages = [{"role": t.role, "content": t.text} for t in turns]
    prompt = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == chat_format.prompt(turns)
    assert theirs.apply_chat_template(messages, tokenize=False) == chat_format.render(turns)

    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    stop = hf_model.generation_config.eos_token_id
    assert sorted(stop) == sorted(ours.token_to_id(t) for t in STOP_MARKERS)
    ids = ours.encode(prompt).ids
    expected = generate(model, ids, 24, temperature=0, stop=stop)
    with torch.no_grad():
        got = hf_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24)[0, len(ids):].tolist()
    assert got[:len(expected)] == expected
    assert len(got) == len(expected) or got[len(expected)] in stop  # HF keeps the stop token, we drop it


def test_moe_models_are_not_exported(tmp_path):
    moe = Transformer(ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, block_size=16,
                                  moe=MoEConfig(n_experts=2, top_k=1)))
    assert "MoE" in hf_export.unsupported(moe)
    with pytest.raises(ValueError, match="cannot export to transformers: MoE"):
        hf_export.export(moe, tmp_path, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
