"""The pipeline from a pretrained checkpoint (`model.init`, `tokenizer.from`): a tiny random Qwen3ForCausalLM that
transformers builds and saves here, with a tokenizer of more than 65,536 ids, so our chat markers land beyond
uint16 and, for two of them, beyond the checkpoint's rows (the model grows its vocabulary)."""
from __future__ import annotations

import contextlib
import csv
import json

import httpx
import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from chatpipe.model.transformer import Transformer
from chatpipe.tasks.chat.format import EOT
from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.pipeline import PIPELINE
from chatpipe.tasks.tokens.reader import TokenReader
from chatpipe.tasks.train import distill, pretrained
from tests.conftest import MICRO, TINY_OVERLAY

IDS = 66_000                  # the checkpoint tokenizer's ids before its <|endoftext|> (Qwen3 has one too)
ROWS = IDS + 2                # its embedding rows: <|endoftext|> and one padding row, as Qwen3 pads to 151,936
ADDED = {"<|system|>": IDS + 1, "<|user|>": IDS + 2, "<|assistant|>": IDS + 3}  # the 1st inside ROWS, 2 beyond


def tokenizer_json(path) -> None:
    """A byte-level BPE (a few hundred merges of our sample text) padded with unreachable entries to IDS ids,
    then <|endoftext|> as a special token: a checkpoint's tokenizer that has none of our turn markers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    text = (PROJECT_ROOT / "data" / "chat_combined.txt").read_text() + (PROJECT_ROOT / "tasks" / "train" / "loop.py").read_text()
    tok.train_from_iterator(text.splitlines(), trainers.BpeTrainer(
        vocab_size=600, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), IDS)})
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    assert tok.token_to_id(EOT) == IDS and tok.get_vocab_size() == IDS + 1
    tok.save(str(path / "tokenizer.json"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """hf:<dir> of a random Qwen3 (QK-norm, head_dim 32 x 4 heads != hidden 64, GQA, untied head)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("qwen3-tiny")
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=ROWS, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                         rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=IDS, eos_token_id=IDS)
    Qwen3ForCausalLM(config).save_pretrained(path)
    tokenizer_json(path)
    return f"hf:{path}"


def hf_model(spec: str, rows: int = ROWS):
    """The checkpoint in transformers, its vocabulary grown to `rows` with the added markers' rows (embedding and
    head) set to the mean of the other rows: what our import must start from, computed independently."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec.removeprefix("hf:"), dtype=torch.float32).eval()
    model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            keep = [i for i in range(ROWS) if i not in ADDED.values()]
            w[list(ADDED.values())] = w[keep].mean(0)
    return model


def params(spec: str, *extra: str):
    return load_params([TINY_OVERLAY], [*MICRO, f"model.init={spec}", f"tokenizer.from={spec}", *extra],
                       base=PROJECT_ROOT / "params.yaml")


def test_the_shape_is_the_checkpoints_and_a_contradiction_names_the_key_and_both_values(checkpoint):
    cfg = pretrained.model_config(params(checkpoint), IDS + 4)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden) == (2, 64, 4, 2, 32, 96)
    assert (cfg.qk_norm, cfg.tie_embeddings, cfg.block_size, cfg.vocab_size) == (True, False, 64, IDS + 4)
    assert pretrained.model_config(params(checkpoint), 1000).vocab_size == ROWS  # never fewer rows than it has
    for override, message in [
        ("model.n_layer=3", f"model.n_layer: 3 contradicts {checkpoint}, whose n_layer is 2 (config.json num_hidden_layers)"),
        ("model.n_kv_heads=4", "model.n_kv_heads: 4 contradicts"),
        ("model.head_dim=16", "model.head_dim: 16 contradicts"),         # any shape key model.init takes
        ("model.rope_theta=500000", "model.rope_theta: 500000.0 contradicts"),
        ("model.tie_embeddings=true", "model.tie_embeddings: True contradicts"),
        ("model.ffn_mult=4", "model.ffn_mult: 4.0 gives an MLP width of 256"),
        ("model.block_size=256", "model.block_size: 256 is longer than"),
        ("tokenizer.from=null", "model.init: " + checkpoint + " needs its own tokenizer"),
    ]:
        with pytest.raises(ConfigError, match="^params: ") as e:
            pretrained.model_config(params(checkpoint, override), IDS + 4)
        assert message in str(e.value) and "\n" not in str(e.value), override
    with pytest.raises(ConfigError, match="model.init: hf:/nonexistent/qwen: no such directory"):
        pretrained.model_config(params("hf:/nonexistent/qwen"), IDS + 4)


def test_the_import_grows_the_vocabulary_and_gives_added_markers_the_mean_row(checkpoint):
    model = Transformer(pretrained.model_config(params(checkpoint), IDS + 4))
    pretrained.load(model, checkpoint, sorted(ADDED.values()))
    theirs = hf_model(checkpoint, IDS + 4)
    ids = torch.tensor([[IDS, *ADDED.values(), 5, 300, 599, 17]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], theirs(ids).logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.lm_head.weight[IDS + 1], model.lm_head.weight[IDS + 3])


def first_loss(root) -> float:
    with open(root / "metrics" / "pilot_curve.csv") as f:
        return float(next(r for r in csv.DictReader(f) if r["step"] == "1")["loss"])


@pytest.mark.integration
def test_the_whole_pipeline_from_a_pretrained_checkpoint(built, checkpoint, tmp_path):
    """tokenizer → shard → pack → pilot → gate → full → sft → eval → publish from the import, then serve."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chatpipe.serve.app import create_app
    from chatpipe.serve.engine import Engine
    from chatpipe.serve.server import running
    from chatpipe.tasks.common import bundle

    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "documents").symlink_to(built[0].documents.resolve())
    p = params(checkpoint, "distill.enabled=false", "train.precision=fp32", "publish.registry=null",
               "gate.max_loss=12")  # the gate judges a random model's 12 steps: ln(66,004) = 11.1 at the start
    layout, results = Layout(root), {}
    with contextlib.chdir(root):
        for stage in ("tokenizer", "shard", "pack", "pilot", "gate", "full", "sft", "eval", "publish"):
            results[stage] = PIPELINE[stage](p, layout)
            assert results[stage].ok, results[stage].summary

    # The adopted tokenizer: our markers added after its ids, <|endoftext|> kept as it was; recorded twice.
    tok = results["tokenizer"].metrics
    assert tok["added_tokens"] == ADDED and tok["special_tokens"][EOT] == IDS and tok["from"] == checkpoint
    assert json.loads((layout.tokenizer / "chat_markers.json").read_text())["added"] == ADDED
    assert all(s["round_trip"] for s in tok["heldout"].values())

    # uint32 shards that hold the markers' ids, and the reader gives them to training as they are.
    manifest = json.loads((layout.shards / "manifest.json").read_text())
    assert manifest["dtype"] == "uint32" and manifest["vocab_size"] == IDS + 4
    shard = pa.ipc.open_file(str(layout.shards / manifest["splits"]["train"]["shards"][0]["path"])).read_all()
    tokens = shard.column("tokens").to_numpy()
    assert shard.schema.field("tokens").type == pa.uint32() and set(ADDED.values()) <= set(np.unique(tokens))
    assert json.loads((layout.sft / "manifest.json").read_text())["dtype"] == "uint32"
    reader = TokenReader(layout.shards, "train", 64, 4, seed=p.seed)
    x, y = reader.next_batch()  # the pilot's first batch
    assert any(int(batch[0].max()) > 65_536 for batch in [(x, y), *(reader.next_batch() for _ in range(200))])

    # The pilot started from the import: its first loss is transformers' on that batch (markers at the mean row).
    assert results["pilot"].metrics["init"] == checkpoint and results["pilot"].metrics["init_rows"] == [IDS + 1, IDS + 2, IDS + 3]
    with torch.no_grad():
        expected = F.cross_entropy(hf_model(checkpoint, IDS + 4)(x).logits.flatten(0, 1), y.flatten()).item()
    assert first_loss(root) == pytest.approx(expected, rel=1e-5)

    # Publish: the HF export loads in transformers (Qwen3, 66,004 rows) with our logits, and its tokenizer.
    dist = root / "dist" / p.publish.name
    ours = bundle.load(dist)
    exported = AutoModelForCausalLM.from_pretrained(dist / "hf", dtype=torch.float32).eval()
    assert exported.config.architectures == ["Qwen3ForCausalLM"] and exported.config.vocab_size == IDS + 4
    ids = torch.tensor([[ADDED["<|user|>"], 40, 41, 42, ADDED["<|assistant|>"], IDS]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, ours.model(ids)[0], rtol=1e-4, atol=1e-4)
    assert AutoTokenizer.from_pretrained(dist / "hf").convert_tokens_to_ids("<|assistant|>") == ADDED["<|assistant|>"]

    # Serve: a chat request over HTTP, and the /chat page.
    engine = Engine(ours, max_concurrent=1)
    try:
        with running(create_app(engine)) as url:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": p.publish.name, "messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
            assert httpx.get(f"{url}/chat", timeout=30).status_code == 200
    finally:
        engine.close()


# Qwen3-0.6B's config.json (the fields a config has on the hub).
QWEN3_0_6B = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
              "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
              "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
              "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
              "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
              "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": True,
              "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}


def test_the_readme_overlay_trains_qwen3_0_6b_as_it_is(tmp_path):
    """configs/pretrained-example.yaml over params.yaml: Qwen3-0.6B's shape at a 1,024-token context; its
    tokenizer's 151,669 ids plus our three markers fit in its 151,936 rows, so nothing grows."""
    from chatpipe.model.info import param_counts

    (tmp_path / "models" / "Qwen3-0.6B").mkdir(parents=True)
    (tmp_path / "models" / "Qwen3-0.6B" / "config.json").write_text(json.dumps(QWEN3_0_6B))
    with contextlib.chdir(tmp_path):  # the overlay names models/Qwen3-0.6B under the project directory
        p = load_params([PROJECT_ROOT / "configs" / "pretrained-example.yaml"], base=PROJECT_ROOT / "params.yaml")
        cfg = pretrained.model_config(p, 151_669 + 3)
    assert p.tokenizer.from_ == p.model.init == "hf:models/Qwen3-0.6B" and p.sft.enabled
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden) == (28, 1024, 16, 8, 128, 3072)
    assert (cfg.vocab_size, cfg.block_size, cfg.tie_embeddings, cfg.qk_norm, cfg.rope_theta) == (151_936, 1024, True, True, 1e6)
    assert round(param_counts(cfg)["total"] / 1e6) == 596  # Qwen3-0.6B: 0.6B, 0.44B without the embedding


@pytest.mark.integration
def test_option_c_the_checkpoint_itself_teaches_its_ternarized_copy(built, checkpoint, tmp_path):
    """`distill.teacher: init`: model.init's checkpoint as it is teaches (no phase of ours trained it); the student
    starts as its copy with the selected linears (here every MLP) ternary, and the run records the checkpoint. Eval
    compares the student with that teacher, not with eval.phase's fine-tune of it."""
    from chatpipe.model.quant import BitLinear
    from chatpipe.tasks.train import checkpoint as checkpoints
    from chatpipe.tasks.train import loop

    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "documents").symlink_to(built[0].documents.resolve())
    p = params(checkpoint, "distill.enabled=true", "distill.teacher=init", "distill.init=teacher",
               "distill.student.quant=ternary", "distill.student.ternary={roles: [w1, w2, w3]}", "distill.steps=1",
               "distill.lr=1e-12", "distill.alpha=0", "train.precision=fp32", "train.checkpoint.every=1",
               "train.validation.every=1", "pilot.steps=1", "full.steps=1", "sft.enabled=false",
               "eval.humaneval.enabled=false")
    layout = Layout(root)
    with contextlib.chdir(root):
        for stage in ("tokenizer", "shard"):
            assert PIPELINE[stage](p, layout).ok
        result = loop.run(p, layout, "distill")
        assert result.metrics["init"] == checkpoint and not (root / "checkpoints" / "pilot").exists()
        for stage in ("pilot", "full", "eval"):  # eval.phase's model: a step of fine-tuning, not the teacher
            assert (evaluated := PIPELINE[stage](p, layout)).ok
    ev = evaluated.metrics
    assert ev["teacher"]["checkpoint"] == ev["comparison"]["teacher"]["checkpoint"] == checkpoint
    assert ev["teacher"]["val_loss"] != ev["val_loss"] and ev["comparison"]["gap"]["val_loss"] == pytest.approx(
        ev["student"]["val_loss"] - ev["teacher"]["val_loss"], abs=1e-5)
    model, state = checkpoints.latest_model(root / "checkpoints" / "distill")
    assert {n for n, m in model.named_modules() if isinstance(m, BitLinear)} == {
        f"blocks.{i}.mlp.{r}" for i in (0, 1) for r in ("w1", "w2", "w3")}
    teacher = state["inputs"]["teacher"]
    assert teacher["phase"] == "init" and teacher["init"] == pretrained.identity(checkpoint)
    assert teacher["init_rows"] == sorted(ADDED.values()) and teacher["model"]["quant"] is None
    imported = Transformer(pretrained.model_config(params(checkpoint), IDS + 4))
    pretrained.load(imported, checkpoint, sorted(ADDED.values()))
    for name, weight in imported.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, rtol=0, atol=1e-6, msg=name)
    with contextlib.chdir(root):  # on CUDA the teacher runs in bf16; its student still starts from the import exactly
        teacher = distill.Teacher.load(p, layout, torch.device("cpu"))
    teacher.model.to(torch.bfloat16)
    student = Transformer(distill.student_config(p, IDS + 4))
    teacher.init_student(student)
    for name, weight in imported.state_dict().items():
        torch.testing.assert_close(student.state_dict()[name], weight, rtol=0, atol=0, msg=name)
    with open(root / "metrics" / "distill_curve.csv") as f:  # KL(checkpoint || its ternary copy): 1.5e-4 measured
        assert float(next(csv.DictReader(f))["loss"]) > 1e-5   # (a random model's logits are nearly flat); 0 if equal
    with pytest.raises(ConfigError, match="distill.teacher: init is model.init's checkpoint; set model.init") as e:
        load_params([TINY_OVERLAY], [*MICRO, "distill.teacher=init"], base=PROJECT_ROOT / "params.yaml")
    assert "\n" not in str(e.value)
