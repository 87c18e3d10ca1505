"""model.gguf (tasks/publish/gguf_export.py), checked by the programs that read GGUF files: llama.cpp itself
(llama-cpp-python, built from PyPI by `make setup`), transformers' GGUF loader, the gguf package's reader and
our own importer (model/gguf.py)."""
from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from chatpipe.kernels.ternary_codes import unpack_ternary
from chatpipe.model import gguf as gguf_in
from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.format import STOP_MARKERS
from chatpipe.tasks.publish import gguf_export
from tests.publish.test_hf_export import perturbed

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the pretrained extra) is not installed")


@contextlib.contextmanager
def llama(path: Path, **kw):
    """llama.cpp on `path`; closed explicitly (its __del__ at interpreter exit is not safe)."""
    llm = llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=1, **kw)
    try:
        yield llm
    finally:
        llm.close()


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    with llama(path, n_ctx=len(ids), n_batch=len(ids), logits_all=True) as llm:
        llm.eval(ids)
        return np.array(llm.scores[:len(ids)])


def tokenizer(directory: Path) -> Tokenizer:
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def vocab(layout) -> int:
    return Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json")).get_vocab_size()


def text_ids(layout, n: int) -> list[int]:
    tok = Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json"))
    text = Path(json.__file__).read_text()  # real code, not the training text
    return tok.encode(text).ids[:n]


@pytest.mark.parametrize("shape, ftype, arch", [
    (dict(), "f16", "llama"),                                                         # tied, MHA
    (dict(tie_embeddings=False, n_kv_heads=2, rope_theta=5e5), "q8_0", "llama"),     # untied, GQA
    (dict(tie_embeddings=False, n_kv_heads=1, qk_norm=True, norm_eps=1e-6), "f16", "qwen3"),
])
def test_llama_cpp_computes_our_logits(built, tmp_path, shape, ftype, arch):
    layout, _, _ = built
    ours = perturbed(ModelConfig(vocab_size=vocab(layout), n_layer=2, n_embd=64, n_head=4, block_size=64, **shape))
    info = gguf_export.export_dir(ours, layout.tokenizer, tmp_path / "m.gguf", ftype=ftype)
    assert info["arch"] == arch and info["type"] == ftype.upper() and info["bytes"] == (tmp_path / "m.gguf").stat().st_size
    ids = text_ids(layout, 64)
    theirs = llama_logits(tmp_path / "m.gguf", ids)
    with torch.no_grad():
        expected = ours(torch.tensor([ids]))[0][0].numpy()
    # F16 weights and activations in llama.cpp's matmuls: 2e-3 on these logits (about 1 in scale); Q8_0: 2e-2,
    # enough to swap a random model's near-tied top tokens, so the argmax is held to 99% for F16 only
    assert np.abs(theirs - expected).max() < (0.01 if ftype == "f16" else 0.05)
    assert ftype != "f16" or (theirs.argmax(-1) == expected.argmax(-1)).mean() >= 0.99


def test_transformers_and_the_gguf_reader_read_back_what_we_wrote(built, tmp_path):
    """transformers' GGUF loader gives our logits (with the F16-rounded weights); the gguf package's reader finds
    every key and tensor as written; our own importer (`gguf:`) reads the file back to the same model."""
    from transformers import AutoModelForCausalLM

    layout, _, _ = built
    ours = perturbed(ModelConfig(vocab_size=vocab(layout), n_layer=2, n_embd=64, n_head=4, n_kv_heads=2,
                                 block_size=64, tie_embeddings=False))
    path = tmp_path / "m.gguf"
    gguf_export.export_dir(ours, layout.tokenizer, path)
    rounded = Transformer(ours.config).eval()
    rounded.load_state_dict({k: v.half().float() if v.ndim == 2 else v for k, v in ours.state_dict().items()})

    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([text_ids(layout, 64)])
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, rounded(ids)[0], rtol=0, atol=1e-4)

    reader = gguf_in._reader(path)
    tok = Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json"))
    value = lambda key: gguf_in._value(reader, key)  # noqa: E731
    assert value("general.architecture") == "llama" and value("llama.block_count") == 2
    assert value("llama.attention.head_count_kv") == 2 and value("llama.context_length") == 64
    assert value("tokenizer.ggml.pre") == "gpt-2" and value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.ggml.tokens") == [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    spec = json.loads((layout.tokenizer / "tokenizer.json").read_text())
    assert value("tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    eos, stops = tok.token_to_id("<|endoftext|>"), [tok.token_to_id(m) for m in STOP_MARKERS[:2]]
    assert [value(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "eot", "eom")] == [eos, eos, *stops]
    assert {value("tokenizer.ggml.token_type")[i] for i in stops} == {3}  # CONTROL: never split, never printed
    assert "<|assistant|>" in value("tokenizer.chat_template")

    via_import = Transformer(gguf_in.read_config(path))
    gguf_in.load_weights(via_import, path)
    assert via_import.config == ours.config
    for name, p in rounded.state_dict().items():
        torch.testing.assert_close(via_import.state_dict()[name], p, rtol=0, atol=0, msg=name)


def strings(rng: random.Random, n: int) -> list[str]:
    """n strings of the kinds a tokenizer's split gets wrong: code, whitespace runs, digits, contractions,
    punctuation, non-ASCII (accents, CJK, emoji, combining marks) and chat markers."""
    code = [line for p in sorted(Path(json.__file__).parent.glob("*.py")) for line in p.read_text().splitlines()]
    pieces = ["  ", "   ", "\t", "\n", "\n\n", " \n ", "123", "4567890", "3.14159", "1,000", "x2", "it's", "we'll",
              "I'M", "don't", "café", "naïve", "日本語", "中文字符", "🤖", "👍🏽", "e\u0301", "Ελληνικά", "русский",
              "!!", "...", "->", "==", "<|user|>", "<|assistant|>", "<|endoftext|>", "\u00a0", "\u3000", "'s", "'S"]
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append("\n".join(rng.sample(code, rng.randint(1, 4))))
        elif kind == 1:
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
        else:
            out.append("".join(rng.choice([*pieces, rng.choice(code)[:20], chr(rng.randint(0x20, 0x2FFF))])
                               for _ in range(rng.randint(1, 8))))
    return out


def test_llama_cpp_tokenizes_as_we_do_on_1000_strings(built, tmp_path):
    layout, _, _ = built
    path = tmp_path / "m.gguf"
    gguf_export.export_dir(perturbed(ModelConfig(vocab_size=vocab(layout), n_layer=1, n_embd=32, n_head=2,
                                             block_size=16)), layout.tokenizer, path)
    tok = Tokenizer.from_file(str(layout.tokenizer / "tokenizer.json"))
    differ = []
    with llama(path, vocab_only=True) as llm:
        for s in strings(random.Random(0), 1000):
            if llm.tokenize(s.encode(), add_bos=False, special=True) != tok.encode(s).ids:
                differ.append(s)
    assert not differ, f"{len(differ)} of 1000 differ, e.g. {differ[:3]!r}"


@pytest.mark.parametrize("ternary, bits", [("tq2_0", 2.0625), ("tq1_0", 1.6875)])
def test_a_ternary_student_runs_in_llama_cpp(built, tmp_path, ternary, bits):
    """Exact codes with the tensor's scale in every 256-block; llama.cpp quantizes activations per block of 256
    (Q8_K), we per token: the logits differ by that alone (the measured cost is in bench/llamacpp.py)."""
    layout, _, _ = built
    student = perturbed(ModelConfig(vocab_size=vocab(layout), n_layer=2, n_embd=256, n_head=4, block_size=64,
                                    ffn_hidden=512, quant="ternary"))
    info = gguf_export.export_dir(student, layout.tokenizer, tmp_path / "s.gguf", ternary=ternary)
    assert info["type"] == ternary.upper() and info["types"][ternary.upper()] == 14  # 2 blocks x 7 linears
    reader = gguf_in._reader(tmp_path / "s.gguf")
    block = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert block.n_bytes * 8 / block.n_elements == bits
    linear = student.blocks[0].mlp.w2
    packed, scale, shape = linear.packed()
    stored = gguf_in._gguf().quants.dequantize(block.data, block.tensor_type).reshape(shape)
    expected = unpack_ternary(packed, scale, shape).numpy()
    assert np.array_equal(np.sign(stored), np.sign(expected))  # every code exact
    assert np.allclose(stored, expected, rtol=2 ** -11, atol=0)  # the scale, as f16
    ids = text_ids(layout, 64)
    theirs = llama_logits(tmp_path / "s.gguf", ids)
    with torch.no_grad():
        expected = student(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(theirs - expected).max() < 0.1 * np.abs(expected).max()
    assert (theirs.argmax(-1) == expected.argmax(-1)).mean() >= 0.8


def test_what_llama_cpp_cannot_hold_is_refused_in_one_line(built, tmp_path):
    layout, _, _ = built
    narrow = Transformer(ModelConfig(vocab_size=vocab(layout), n_layer=1, n_embd=128, n_head=4, block_size=16,
                                     quant="ternary"))
    why = gguf_export.unsupported(narrow, tokenizer(layout.tokenizer))
    assert why.startswith("tensor blk.0.attn_q.weight has rows of 128 weights;") and "\n" not in why
    with pytest.raises(ValueError, match="cannot export to GGUF: tensor blk.0.attn_q.weight"):
        gguf_export.export_dir(narrow, layout.tokenizer, tmp_path / "n.gguf")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file
    moe = Transformer(ModelConfig(vocab_size=vocab(layout), n_layer=1, n_embd=64, n_head=4, block_size=16,
                                  moe=MoEConfig(n_experts=2, top_k=1)))
    assert gguf_export.unsupported(moe, tokenizer(layout.tokenizer)).startswith("MoE models")
    odd = tmp_path / "tok"
    odd.mkdir()
    spec = json.loads((layout.tokenizer / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(spec))
    dense = Transformer(ModelConfig(vocab_size=vocab(layout), n_layer=1, n_embd=64, n_head=4, block_size=16))
    assert "has no llama.cpp equivalent" in gguf_export.unsupported(dense, tokenizer(odd))


def test_a_failed_export_leaves_no_file(built, tmp_path):
    """An export that fails half-way (here: a model with fewer embedding rows than the tokenizer has tokens,
    found while writing the vocabulary) leaves the previous file as it was and no temp file."""
    layout, _, _ = built
    model = Transformer(ModelConfig(vocab_size=vocab(layout) - 1, n_layer=1, n_embd=64, n_head=4, block_size=16))
    (tmp_path / "m.gguf").write_bytes(b"the previous file")
    with pytest.raises(ValueError, match=f"the tokenizer has {vocab(layout)} tokens, the model's embedding"):
        gguf_export.export_dir(model, layout.tokenizer, tmp_path / "m.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"] and (tmp_path / "m.gguf").read_bytes() == b"the previous file"


@pytest.mark.integration
@pytest.mark.slow  # make test keeps a GGUF model fine-tuned through the pipeline (tests/train/test_chat_format_model.py)
def test_a_gguf_model_goes_out_as_gguf_and_llama_cpp_answers_as_our_server(tmp_path):
    """SmolLM2-135M-Instruct, imported from its Q4_1 GGUF, exported to F16 with its own chat template: for five
    chat prompts llama.cpp's greedy answer (its chat template from the file, its stop tokens) is our server's."""
    import httpx

    from chatpipe.serve.app import create_app
    from chatpipe.serve.engine import Engine
    from chatpipe.serve.server import running
    from chatpipe.serve.source import open_bundle
    from tests.serve.test_serve_pretrained import NEW_TOKENS, PROMPTS, SPEC

    engine = Engine(open_bundle(SPEC, "cpu"), max_concurrent=1)
    try:
        source = engine.bundle
        info = gguf_export.export(source.model, source.tokenizer, source.chat, tmp_path / "smollm2.gguf")
        assert info["types"] == {"F32": 61, "F16": 211}  # 30 blocks x (2 norms, 7 linears), output_norm, token_embd
        with running(create_app(engine)) as url, llama(tmp_path / "smollm2.gguf", n_ctx=512) as llm:
            for text in PROMPTS:
                messages = [{"role": "user", "content": text}]
                theirs = llm.create_chat_completion(messages, max_tokens=NEW_TOKENS, temperature=0, top_k=1,
                                                    repeat_penalty=1.0)["choices"][0]["message"]["content"]
                ours = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                    "model": engine.name, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0}).json()
                assert theirs.strip() == ours["choices"][0]["message"]["content"], text
    finally:
        engine.close()


def test_chatpipe_gguf_writes_any_served_model(bundle_path, tmp_path):
    """`chatpipe gguf --model <bundle> out.gguf`: the file llama.cpp loads; a bad type is one line, no file."""
    import subprocess
    import sys

    cli = [sys.executable, "-m", "chatpipe.cli", "gguf", "--model", str(bundle_path)]
    done = subprocess.run([*cli, str(tmp_path / "m.gguf"), "--type", "q8_0"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"{tmp_path / 'm.gguf'} (") and "llama, Q8_0; sha256 " in done.stdout
    assert "INFO" not in done.stderr  # the gguf writer's progress lines stay quiet
    with llama(tmp_path / "m.gguf", vocab_only=True) as llm:
        assert llm.n_vocab() == json.loads((bundle_path / "config.json").read_text())["model"]["vocab_size"]
    bad = subprocess.run([*cli, str(tmp_path / "q4.gguf"), "--type", "q4"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert "ftype 'q4' (one of f16, q8_0)" in bad.stderr and not (tmp_path / "q4.gguf").exists()
