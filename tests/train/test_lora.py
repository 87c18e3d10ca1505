"""LoRA (tasks/train/lora.py) and the training-memory options (train.weights, train.activation_checkpointing),
on the `built` fixture's shards with a tiny model on the CPU."""
from __future__ import annotations

import contextlib
import itertools
import json
import shutil

import pytest
import torch
from safetensors import safe_open

from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer
from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.pipeline import PIPELINE
from chatpipe.tasks.publish import lineage
from chatpipe.tasks.tokens.reader import TokenReader
from chatpipe.tasks.train import checkpoint, loop, lora, pretrained
from chatpipe.tasks.train.optim import Optimizers, hidden_matrices
from chatpipe.tasks.train.phases import PHASES
from tests.train import test_pretrained
from tests.train.test_train import cli_train, curve

from conftest import TINY, kill_when, linked, test_params

LORA = ["train.lora.rank=4", "train.lora.alpha=8"]
SETTINGS = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]}
ADAPTED = 2 * 7 * 2  # layers x targets x (A, B)


@pytest.fixture
def project(tmp_path, built, trained):
    """A project with the `trained` fixture's pilot checkpoints: what a LoRA full run adapts."""
    root = linked(tmp_path / "project", built[0])
    shutil.copytree(trained[0].checkpoints / "pilot", root / "checkpoints" / "pilot")
    return root


def test_only_the_adapters_train_and_the_base_stays_bit_identical(built):
    torch.manual_seed(0)
    vocab = json.loads((built[0].shards / "manifest.json").read_text())["vocab_size"]
    model = Transformer(preset("chat-7m", vocab_size=vocab, n_layer=2, n_embd=64, n_head=4, block_size=64))
    start = {name: t.clone() for name, t in model.state_dict().items()}
    lora.attach(model, SETTINGS)
    optimizers = Optimizers(model, test_params(*TINY, *LORA, "train.optimizer.lr=2e-2").train)
    held = {id(p) for opt in optimizers.all for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if id(p) in held} == {n for n in named if ".lora_" in n}
    assert len(held) == ADAPTED and not any(p.requires_grad for n, p in named.items() if ".lora_" not in n)

    x, y = TokenReader(built[0].shards, "train", 64, 4).next_batch()
    losses = []
    for _ in range(12):
        loss = model(x, y)[1]
        loss.backward()
        optimizers.step()
        optimizers.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    after = {n.replace(".base_layer", ""): t for n, t in model.state_dict().items() if ".lora_" not in n}
    assert after.keys() == start.keys() and all(torch.equal(after[n], start[n]) for n in start)


def moved_apart(weight: torch.Tensor, before: torch.Tensor, rows: list[int]) -> bool:
    """`rows` of `weight` changed from `before`, each differs from the others, and every other row is bit-identical."""
    others = [i for i in range(len(weight)) if i not in rows]
    return (torch.equal(weight[others], before[others]) and not any(torch.equal(weight[r], before[r]) for r in rows)
            and not any(torch.equal(weight[a], weight[b]) for a, b in itertools.combinations(rows, 2)))


@pytest.mark.parametrize("tied", [False, True])
def test_added_marker_rows_train_beside_the_adapters_and_merge_into_the_plain_model(tmp_path, tied):
    """Rows that start as one mean row (an import's added chat markers) train with the adapters, in the embedding
    and the head, tied or not, through the fused loss (`chunked`, which reads lm_head.weight); every other row
    stays bit-identical; saved with the adapters, they merge into a plain Transformer with the adapted logits."""
    torch.manual_seed(0)
    config = preset("chat-7m", vocab_size=300, n_layer=2, n_embd=64, n_head=4, block_size=32, tie_embeddings=tied)
    model, rows = Transformer(config).use_kernels("chunked"), [10, 11, 12]
    with torch.no_grad():
        for w in {id(w): w for w in (model.tok_emb.weight, model.lm_head.weight)}.values():
            w[rows] = w.mean(0)
    start = {name: t.clone() for name, t in model.state_dict().items()}
    lora.attach(model, SETTINGS, rows)
    assert "and 3 token rows: " in lora.describe(model, SETTINGS)
    named = dict(model.named_parameters())
    tokens = {n for n in named if "trainable_tokens" in n}
    assert tokens == {f"{m}.token_adapter.trainable_tokens_delta.default" for m in ("tok_emb",) + ((), ("lm_head",))[not tied]}
    assert not tokens & {n for n, p in named.items() if id(p) in hidden_matrices(model)}  # AdamW's, not Muon's

    optimizers = Optimizers(model, test_params(*TINY, *LORA, "train.optimizer.lr=2e-2").train)
    x = torch.randint(0, 300, (4, 33))
    x[:, 1::4], x[:, 2::4], x[:, 3::8] = 10, 11, 12
    for _ in range(5):
        model(x[:, :-1], x[:, 1:])[1].backward()
        optimizers.step()
        optimizers.zero_grad()
    lora.save(model.eval(), tmp_path / "adapters.safetensors")
    with safe_open(str(tmp_path / "adapters.safetensors"), "pt") as f:
        assert {n for n in f.keys() if ".lora_" not in n} == {n.removesuffix(".default") for n in tokens}

    base = Transformer(config)
    base.load_state_dict(start)
    merged = lora.merge(base, SETTINGS, tmp_path / "adapters.safetensors", rows)
    assert type(merged.tok_emb) is torch.nn.Embedding and type(merged.lm_head) is torch.nn.Linear
    assert moved_apart(merged.tok_emb.weight, start["tok_emb.weight"], rows)
    assert (merged.lm_head.weight is merged.tok_emb.weight) if tied else moved_apart(
        merged.lm_head.weight, start["lm_head.weight"], rows)
    with torch.no_grad():
        torch.testing.assert_close(merged(x[:, :-1])[0], model(x[:, :-1])[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(merged(x[:, :-1], x[:, 1:])[1], model(x[:, :-1], x[:, 1:])[1], atol=1e-5, rtol=0)


def test_a_lora_full_run_saves_adapters_and_everything_downstream_gets_the_merged_model(project):
    with contextlib.chdir(project):
        result = loop.run(test_params(*TINY, *LORA), Layout(project), "full")
    assert result.ok and "LoRA rank 4 on wq, wk, wv, wo, w1, w2, w3" in result.summary
    assert result.metrics["params_trained"] < result.metrics["params_total"] / 5
    path = checkpoint.latest(project / "checkpoints" / "full")
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert len(names) == ADAPTED and all(".lora_A." in n or ".lora_B." in n for n in names)
    optimizer = torch.load(path / "optimizer.pt", weights_only=True)
    assert len(optimizer[0]["state"]) == ADAPTED
    state = checkpoint.read_state(path)
    assert state["inputs"]["base"]["checkpoint"] == "pilot/step-000012"
    assert state["inputs"]["recipe"]["lora"]["rank"] == 4

    merged, merged_state = checkpoint.latest_model(project / "checkpoints" / "full")
    assert lineage.training(Layout(project), merged_state)["lora"]["base"]["checkpoint"] == "pilot/step-000012"
    base, _ = checkpoint.latest_model(project / "checkpoints" / "pilot")
    assert type(merged.blocks[0].attn.wq) is torch.nn.Linear  # a plain Transformer
    mine, theirs = merged.state_dict(), base.state_dict()
    for name in mine:  # the adapted linears moved, nothing else did
        assert torch.equal(mine[name], theirs[name]) != name.endswith(tuple(f"{t}.weight" for t in SETTINGS["targets"]))

    adapted, _ = checkpoint.latest_model(project / "checkpoints" / "pilot")
    lora.attach(adapted, SETTINGS)
    lora.load(adapted, path / "model.safetensors")
    x = torch.randint(0, merged.config.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.allclose(merged(x)[0], adapted.eval()(x)[0], atol=1e-5, rtol=0)
        published = bundle.load(bundle.write(project / "dist" / "lora", merged, project / "artifacts" / "tokenizer",
                                             "# lora\n")).model
        assert torch.equal(published(x)[0], merged(x)[0])

    shutil.rmtree(project / "checkpoints" / "pilot" / "step-000012")
    with pytest.raises(Exception, match=r"holds LoRA adapters of .*pilot/step-000012, which is gone or changed"):
        checkpoint.latest_model(project / "checkpoints" / "full")


@pytest.mark.integration
@pytest.mark.slow  # resume after SIGKILL stays in make test through the training loop's own test (test_train.py)
def test_lora_resumes_bit_exact_after_sigkill(project, built, trained):
    other = linked(project.parent / "uninterrupted", built[0])
    shutil.copytree(trained[0].checkpoints / "pilot", other / "checkpoints" / "pilot")
    full = ["full.steps=20", "train.checkpoint.every=3", "train.checkpoint.keep=2", *LORA,
            "train.lora.dropout=0.1"]  # dropout: the RNG's position must resume too
    cli_train(other, *full, phase="full")
    proc = cli_train(project, *full, phase="full", wait=False)
    kill_when(proc, project / "checkpoints" / "full" / "step-000009")
    assert "train full: 20 steps" in cli_train(project, *full, phase="full").stdout
    assert json.loads((project / "metrics" / "full.json").read_text())["resumed_at"] in (9, 12, 15)
    assert curve(project, "full") == curve(other, "full")  # same strings: same float bits



@pytest.mark.parametrize("option", ["train.activation_checkpointing=true", "train.weights=bf16"])
def test_memory_options_train_and_resume_exactly(tmp_path, built, option):
    """A few steps, then the same run resumed from its step-4 checkpoint (as after a kill there) gives the
    same per-step losses; activation checkpointing computes what the plain run does."""
    params = test_params(*TINY, "pilot.steps=8", "train.checkpoint.every=4", "train.validation.every=8",
                         "train.sample.every=8", option)
    root = linked(tmp_path / "p", built[0])
    first = loop.run(params, Layout(root), "pilot")
    losses = curve(root, "pilot")
    assert first.ok and float(losses[-1][1]) < float(losses[0][1])
    shutil.rmtree(root / "checkpoints" / "pilot" / "step-000008")
    again = loop.run(params, Layout(root), "pilot")
    assert again.metrics["resumed_at"] == 4 and curve(root, "pilot") == losses
    path = checkpoint.latest(root / "checkpoints" / "pilot")
    name, value = option.removeprefix("train.").split("=")
    assert str(checkpoint.read_state(path)["inputs"]["recipe"][name]).lower() == value  # an input of resume
    if option.endswith("bf16"):
        assert "bf16 weights; trained weights, grads and AdamW moments bfloat16" in first.summary
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
        moments = torch.load(path / "optimizer.pt", weights_only=True)[0]["state"].values()
        assert {v.dtype for s in moments for k, v in s.items() if k != "step"} == {torch.bfloat16}
        assert next(checkpoint.latest_model(path.parent)[0].parameters()).dtype == torch.float32  # downstream: fp32
    else:
        plain = linked(tmp_path / "plain", built[0])
        loop.run(test_params(*TINY, "pilot.steps=8", "train.checkpoint.every=4", "train.validation.every=8",
                             "train.sample.every=8"), Layout(plain), "pilot")
        assert [float(r[1]) for r in losses] == pytest.approx(
            [float(r[1]) for r in curve(plain, "pilot")], rel=1e-5)


def test_lora_applies_to_phases_that_start_from_weights_and_refuses_what_it_cannot_adapt():
    params = test_params(*LORA)
    assert [name for name, p in PHASES.items() if p.adapts(params)] == ["full", "sft"]
    assert not PHASES["full"].adapts(test_params(*LORA, "full.init=scratch"))
    assert not PHASES["full"].adapts(test_params())
    settings = params.train.lora
    for shape, why in ((["model.quant=ternary"], "ternary"), (["model.moe.n_experts=4", "model.moe.top_k=1"], "MoE")):
        mcfg = pretrained.model_config(test_params(*shape), 512)
        with pytest.raises(ConfigError, match=f"params: train.lora: .*{why}"):
            lora.check(settings, mcfg)
    with pytest.raises(ConfigError, match=r"^params: train.lora: LoRA on train.device=vulkan: [^\n]+$"):
        test_params(*LORA, "train.device=vulkan")  # refused when params load


imported_checkpoint = test_pretrained.checkpoint  # a fixture: hf:<dir> of a tiny random Qwen3 (its module's)


def test_a_lora_pilot_adapts_an_import_and_everything_downstream_gets_it_merged(built, tmp_path, imported_checkpoint):
    """model.init's pilot: the base is the import (spec, file hashes, mean rows), rebuilt to merge the adapters;
    the added markers' rows (one mean row at the start) train apart, in the embedding and the untied head, while
    every other row stays the import's; killed after its step-2 checkpoint, the run resumes to the same losses."""
    spec = imported_checkpoint
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "documents").symlink_to(built[0].documents.resolve())
    params = test_pretrained.params(spec, "train.precision=fp32", "pilot.steps=4", "train.checkpoint.every=2",
                                    "train.validation.every=4", "train.sample.every=4", *LORA)
    with contextlib.chdir(root):
        for stage in ("tokenizer", "shard"):
            assert PIPELINE[stage](params, Layout(root)).ok
        result = loop.run(params, Layout(root), "pilot")
        losses = curve(root, "pilot")
        shutil.rmtree(root / "checkpoints" / "pilot" / "step-000004")
        again = loop.run(params, Layout(root), "pilot")
    assert result.ok and "LoRA rank 4 on wq, wk, wv, wo, w1, w2, w3 and 3 token rows" in result.summary
    assert again.metrics["resumed_at"] == 2 and curve(root, "pilot") == losses
    path = checkpoint.latest(root / "checkpoints" / "pilot")
    base = checkpoint.read_state(path)["inputs"]["base"]
    rows = sorted(test_pretrained.ADDED.values())
    assert base["hf"] == spec and base["rows"] == base["token_rows"] == rows
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert {n: f.get_slice(n).get_shape() for n in f.keys() if ".lora_" not in n} == {
            f"{m}.token_adapter.trainable_tokens_delta": [3, 64] for m in ("tok_emb", "lm_head")}

    merged, _ = checkpoint.latest_model(path.parent)
    start = Transformer(merged.config)
    pretrained.load(start, spec, base["rows"])
    for name in ("tok_emb.weight", "lm_head.weight"):
        assert moved_apart(merged.get_parameter(name), start.get_parameter(name), rows), name
    adapted = start
    lora.attach(adapted, SETTINGS, rows)
    lora.load(adapted, path / "model.safetensors")
    x = torch.randint(0, merged.config.vocab_size, (2, 16))
    x[:, ::3] = torch.tensor(rows).repeat(2, 6)[:, :6]
    with torch.no_grad():
        assert torch.allclose(merged(x)[0], adapted.eval()(x)[0], atol=1e-5, rtol=0)
