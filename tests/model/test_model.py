"""The transformer, the MoE layer, configs, presets and the analytic counts (tiny configs, CPU, seconds)."""
from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.info import LORA_TARGETS, describe, flops_per_token, lora_params, param_counts, train_memory
from chatpipe.model.moe import MoE
from chatpipe.model.presets import PRESETS, preset
from chatpipe.model.transformer import Transformer

TINY = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=32, multiple_of=16)
MOE = MoEConfig(n_experts=4, top_k=2)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


def build(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny(**kw))


def tokens(B=2, T=16, V=64, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- transformer

@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"n_kv_heads": 1, "qk_norm": True}, {"moe": MOE}])
def test_causal(kw):
    model = build(**kw).eval()  # eval: MoE capacity (which couples a batch's tokens) is a training device
    idx = tokens()
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 64
    a, _ = model(idx)
    b, _ = model(changed)
    assert a.shape == (2, 16, 64)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_gqa_with_all_heads_is_mha():
    mha = build(n_kv_heads=None)
    gqa = Transformer(tiny(n_kv_heads=4))
    gqa.load_state_dict(mha.state_dict())
    idx = tokens()
    assert torch.equal(mha(idx)[0], gqa(idx)[0])


def test_gqa_attention_matches_reference():
    """Query head h reads KV head h // (n_head / n_kv_heads); checked against explicit softmax attention."""
    model = build(n_kv_heads=2, qk_norm=True)
    attn, (B, T, H, KV, d) = model.blocks[0].attn, (2, 8, 4, 2, 8)
    x = torch.randn(B, T, 32)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    from chatpipe.model.transformer import apply_rope
    q = apply_rope(attn.q_norm(attn.wq(x).view(B, T, H, d)), cos, sin).transpose(1, 2)
    k = apply_rope(attn.k_norm(attn.wk(x).view(B, T, KV, d)), cos, sin).transpose(1, 2)
    v = attn.wv(x).view(B, T, KV, d).transpose(1, 2)
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    ref = attn.wo((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))
    torch.testing.assert_close(attn(x, cos, sin), ref, rtol=1e-5, atol=1e-6)


def test_tied_and_untied_embeddings():
    tied, untied = build(tie_embeddings=True), build(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 64 * 32
    assert tied.num_params(exclude_embedding=True) == tied.num_params() - 64 * 32


def test_qk_norm_and_init():
    model = build(qk_norm=True)
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= names
    assert not any(n.endswith("bias") for n in names)
    logits, loss = model(tokens(), tokens(seed=2))
    assert torch.isfinite(loss)
    big = Transformer(ModelConfig(vocab_size=64, n_layer=8, n_embd=256, n_head=4, block_size=8))
    assert abs(big.blocks[0].attn.wq.weight.std().item() - 0.02) < 0.002
    assert abs(big.blocks[0].attn.wo.weight.std().item() - 0.02 / 4) < 0.0005  # 1/sqrt(2 * 8 layers)


def test_loss_ignores_minus_one_and_rejects_long_input():
    model = build()
    idx, tgt = tokens(), tokens(seed=2)
    logits, loss = model(idx, tgt)
    masked = tgt.clone()
    masked[:, :8] = -1
    _, loss_masked = model(idx, masked)
    expect = F.cross_entropy(logits[:, 8:].reshape(-1, 64), tgt[:, 8:].reshape(-1))
    torch.testing.assert_close(loss_masked, expect)
    assert model(idx)[1] is None and float(model.last_aux_loss) == 0.0
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


# ---------------------------------------------------------------- MoE

def moe_layer(n_embd=8, hidden=16, E=4, k=2, cf=1.25, seed=0) -> MoE:
    torch.manual_seed(seed)
    m = MoE(n_embd, hidden, E, k, cf)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.5)
    return m


def test_moe_routes_each_token_to_its_top_k_experts():
    m, x = moe_layer().eval(), torch.randn(2, 5, 8)
    out, _ = m(x)
    assert out.shape == x.shape
    flat = x.reshape(-1, 8)
    probs = F.softmax(flat @ m.router.weight.t(), -1)
    ref = torch.zeros_like(flat)
    for t in range(flat.size(0)):  # token by token, straight from the definition
        w, e = probs[t].topk(2)
        for wi, ei in zip(w / w.sum(), e.tolist()):
            ref[t] += wi * ((F.silu(flat[t] @ m.w1[ei]) * (flat[t] @ m.w3[ei])) @ m.w2[ei])
    torch.testing.assert_close(out.reshape(-1, 8), ref, rtol=1e-5, atol=1e-6)
    assert sum(m.last_stats["load"]) == 20 and m.last_stats["dropped"] == 0


def test_moe_capacity_drops_overflow_in_training():
    m = moe_layer(E=4, k=1, cf=0.5)
    with torch.no_grad():  # every token prefers expert 0
        m.router.weight.zero_()
        m.router.weight[0] = 1.0
    x = torch.rand(1, 8, 8) + 0.1
    out, _ = m(x)  # capacity = ceil(0.5 * 1 * 8 / 4) = 1: token 0 is served, 7 are dropped
    assert m.last_stats == {"capacity": 1, "dropped": 7, "dropped_frac": 7 / 8, "load": [8, 0, 0, 0]}
    assert out[0, 0].abs().sum() > 0 and torch.all(out[0, 1:] == 0)
    m.eval()
    out, _ = m(x)
    assert m.last_stats["dropped"] == 0 and torch.all(out.abs().sum(-1) > 0)


def test_moe_aux_loss_hand_checked_and_uniform():
    m = MoE(2, 4, n_experts=2, top_k=1, capacity_factor=1.25)
    with torch.no_grad():
        m.router.weight.copy_(torch.eye(2) * math.log(3))
    # logits [ln3, 0] -> probs [3/4, 1/4] (twice); [0, ln3] -> [1/4, 3/4].
    # f = [2/3, 1/3], P = [7/12, 5/12], aux = 2 * (2/3 * 7/12 + 1/3 * 5/12) = 19/18
    _, aux = m(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert aux.item() == pytest.approx(19 / 18, rel=1e-6)
    with torch.no_grad():
        m.router.weight.zero_()  # uniform router probabilities: the minimum, 1.0
    _, aux = m(torch.randn(6, 2))
    assert aux.item() == pytest.approx(1.0, rel=1e-6)


def test_moe_loss_includes_aux_and_gradients_flow():
    model = build(moe=MoEConfig(n_experts=4, top_k=2, aux_loss_coef=0.5))
    idx, tgt = tokens(), tokens(seed=2)
    logits, loss = model(idx, tgt)
    ce = F.cross_entropy(logits.reshape(-1, 64), tgt.reshape(-1))
    assert model.last_aux_loss.item() >= 2.0 - 1e-6  # two MoE layers, each >= 1 here
    torch.testing.assert_close(loss, ce + 0.5 * model.last_aux_loss)
    loss.backward()
    moe = model.blocks[0].mlp
    assert moe.router.weight.grad.abs().sum() > 0
    for w in (moe.w1, moe.w2, moe.w3):
        assert w.grad.abs().sum() > 0


def test_moe_every_mixes_dense_and_moe_layers():
    model = build(n_layer=4, moe=MoEConfig(n_experts=4, top_k=1, every=2))
    assert [type(b.mlp).__name__ for b in model.blocks] == ["MLP", "MoE", "MLP", "MoE"]


@pytest.mark.parametrize("kw", [{"n_kv_heads": 2, "qk_norm": True, "head_dim": 16}, {"moe": MOE}])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(kw):
    plain, ckpt = build(**kw), build(**kw).checkpoint_blocks()
    idx, tgt = tokens(), tokens(seed=2)
    losses = []
    for model in (plain, ckpt):
        _, loss = model(idx, tgt)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=name)
    with torch.no_grad():  # inference is untouched (and a KV cache bypasses it too)
        assert torch.equal(plain(idx)[0], ckpt(idx)[0])
    assert ckpt.checkpoint_blocks(False).checkpointing is False


@pytest.mark.parametrize("kw", [{}, {"moe": MoEConfig(n_experts=4, top_k=2, capacity_factor=2.0)}])
def test_loss_decreases_when_memorizing(kw):
    model = build(**kw)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seq = tokens(B=1, T=17, seed=3).repeat(4, 1)
    x, y = seq[:, :-1], seq[:, 1:]
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.5 and losses[-1] < 0.15 * losses[0], losses  # ln(64) = 4.16 -> memorized


# ---------------------------------------------------------------- config and presets

@pytest.mark.parametrize("kw, field", [
    ({"n_embd": 30}, "n_embd"),                      # not divisible by n_head=4
    ({"n_embd": 12, "n_head": 4}, "n_head"),         # head_dim 3 is odd
    ({"n_kv_heads": 3}, "n_kv_heads"),
    ({"n_layer": 0}, "n_layer"),
    ({"moe": {"n_experts": 4}}, "moe"),
    ({"head_dim": 7}, "head_dim"),                   # odd: RoPE rotates pairs
    ({"ffn_hidden": 0}, "ffn_hidden"),
])
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


@pytest.mark.parametrize("kw, field", [({"n_experts": 4, "top_k": 5}, "top_k"),
                                        ({"n_experts": 4, "top_k": 1, "every": 0}, "every"),
                                        ({"n_experts": 4, "top_k": 1, "capacity_factor": 0}, "capacity_factor")])
def test_moe_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        MoEConfig(**kw)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_json_round_trip(name):
    cfg = PRESETS[name]
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layers": 3})
    if cfg.moe:
        with pytest.raises(ValueError, match="moe: unknown field.*experts"):
            ModelConfig.from_dict({**cfg.to_dict(), "moe": {**cfg.moe.__dict__, "experts": 8}})


def test_explicit_head_and_ffn_sizes():
    cfg = tiny(n_embd=30, n_head=4, head_dim=16, ffn_hidden=40)  # 4 x 16 = 64 != 30: fine when given
    assert (cfg.head_dim, cfg.ffn_hidden, tiny().head_dim, tiny().ffn_hidden) == (16, 40, 8, 96)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    attn = Transformer(cfg).blocks[0].attn
    assert (attn.wq.weight.shape, attn.wk.weight.shape, attn.wo.weight.shape) == ((64, 30), (64, 30), (30, 64))


def test_widths_left_unset_are_resolved_once_under_their_own_names():
    cfg = tiny()
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.ffn_hidden) == (4, 8, 96)  # n_head; 32 / 4; 2.667 x 32 -> 96
    assert tiny(n_kv_heads=None) == tiny(n_kv_heads=4) and cfg.to_dict()["n_kv_heads"] == 4


def test_a_checkpoints_config_json_of_before_the_renames_loads():
    """model/config.py before head_dim and ffn_hidden were fields: head_size, ffn_size, and None for the widths."""
    new = {k: v for k, v in tiny().to_dict().items() if k not in ("head_dim", "ffn_hidden")}
    assert ModelConfig.from_dict({**new, "n_kv_heads": None, "head_size": None, "ffn_size": None}) == tiny()
    assert ModelConfig.from_dict({**new, "n_kv_heads": 2, "head_size": 16, "ffn_size": 40}) == \
        tiny(n_kv_heads=2, head_dim=16, ffn_hidden=40)
    assert ModelConfig.from_dict(new) == tiny()  # and before they existed


def test_preset_overrides_and_unknown_name():
    cfg = preset("chat-7m", vocab_size=2048, n_layer=2)
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd) == (2048, 2, 256)
    small = preset("chat-7m", n_embd=128, n_head=2)  # widths the preset left unset follow the overridden shape
    assert (small.head_dim, small.ffn_hidden, small.n_kv_heads) == (64, 384, 2)
    with pytest.raises(ValueError, match="chat-7m.*nano-125m"):
        preset("gpt-5")
    with pytest.raises(ValueError, match="n_layers"):
        preset("chat-7m", n_layers=2)
    with pytest.raises(ValueError, match="n_embd"):
        preset("chat-7m", n_embd=100)


# ---------------------------------------------------------------- analytic counts

@pytest.mark.parametrize("cfg", [
    PRESETS["chat-7m"],
    PRESETS["qwen3-hybrid-mini"],
    tiny(n_kv_heads=2, qk_norm=True),
    tiny(tie_embeddings=False, ffn_mult=3.0),
    tiny(n_layer=3, moe=MoEConfig(n_experts=5, top_k=2, expert_ffn_mult=0.5, every=2)),
    tiny(n_kv_heads=2, qk_norm=True, head_dim=16, ffn_hidden=40, tie_embeddings=False),
], ids=["chat-7m", "qwen3-hybrid-mini", "gqa", "untied", "moe-every-2", "head-and-ffn-size"])
def test_param_counts_match_instantiation(cfg):
    model = Transformer(cfg)
    counts = param_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == model.num_params()
    assert counts["embedding"] == model.tok_emb.weight.numel()
    if cfg.moe is None:
        assert counts["active"] == counts["total"]
    else:
        inactive = sum(b.mlp.w1.numel() + b.mlp.w2.numel() + b.mlp.w3.numel() for b in model.blocks
                       if hasattr(b.mlp, "router")) * (cfg.moe.n_experts - cfg.moe.top_k) // cfg.moe.n_experts
        assert counts["active"] == counts["total"] - inactive


def test_preset_sizes():
    total = {n: param_counts(c)["total"] for n, c in PRESETS.items()}
    assert 6.8e6 < total["chat-7m"] < 7.2e6
    assert 120e6 < total["nano-125m"] < 128e6
    t0 = time.perf_counter()
    big = param_counts(PRESETS["qwen3-hybrid"])
    assert time.perf_counter() - t0 < 1.0
    assert big["total"] > 10e9 and big["active"] < big["total"] / 10


def test_flops_and_memory():
    cfg = PRESETS["chat-7m"]  # untied: the head is a matrix of its own, the embedding a lookup
    n = param_counts(cfg)["total"] - 4096 * 256
    assert flops_per_token(cfg) == 6 * n + 12 * 6 * 256 * 256
    assert flops_per_token(cfg, seq_len=128) == 6 * n + 12 * 6 * 256 * 128
    tied = preset("chat-7m", tie_embeddings=True)  # tied: the shared matrix still costs its head matmul
    assert flops_per_token(tied) == 6 * param_counts(tied)["total"] + 12 * 6 * 256 * 256
    adam, muon = train_memory(cfg, 16), train_memory(cfg, 16, optimizer="muon")
    assert adam["weights"] == adam["grads"] == 4 * param_counts(cfg)["total"]
    assert adam["optimizer"] == 2 * adam["weights"] and adam["weights"] < muon["optimizer"] < adam["optimizer"]
    assert adam["total"] == sum(v for k, v in adam.items() if k != "total")
    assert train_memory(cfg, 32)["activations"] == 2 * adam["activations"] > 0
    with pytest.raises(ValueError, match="adamw"):
        train_memory(cfg, 1, optimizer="lion")
    text = describe("qwen3-hybrid")
    assert "qwen3-hybrid" in text and "78.44B" in text and "active 2.64B" in text
    assert "custom" in describe(dataclasses.replace(cfg, n_layer=2))


def test_train_memory_options_by_hand():
    # V 64, d 32, 4 heads x 16 (q_d 64), 2 KV heads (kv_d 32), ffn 40, 2 layers, tied, no QK-norm.
    cfg = tiny(n_kv_heads=2, head_dim=16, ffn_hidden=40)
    # per layer: wq, wo 2 * 32 * 64 + wk, wv 2 * 32 * 32 = 6144; norms 64; MLP 3 * 32 * 40 = 3840 -> 10048
    assert param_counts(cfg)["total"] == 64 * 32 + 32 + 2 * 10048 == 22176
    assert flops_per_token(cfg, seq_len=8) == 6 * 22176 + 12 * 2 * 64 * 8  # tied: the head is a matmul; q_d 64
    # activations per layer: 2d + 4 q_d + 3 kv_d + 2d + 4h = 64 + 256 + 96 + 64 + 160 = 640 elements; head 2d;
    # fp32: (2 * 640 + 64) * 4 + 2 * V * 4 = 5888 B per token; 2 x 8 = 16 tokens
    assert train_memory(cfg, 2, 8) == {"weights": 88704, "grads": 88704, "optimizer": 2 * 88704,
                                       "activations": 16 * 5888, "total": 4 * 88704 + 16 * 5888}
    # LoRA rank 2 per layer: wq (32+64) + wk, wv 2 (32+32) + wo (64+32) + w1, w3, w2 3 (32+40) = 536 -> 2 * 2 * 536
    assert lora_params(cfg, 2) == 2144
    # bf16 base x 2 B; the adapters train in fp32 (peft): weights and grads 4 B, AdamW 2 x 4 B per adapter param;
    # checkpointing: L * d inputs + one block (640 + 7 adapters x rank 2) + head: (64 + 654 + 64) * 2 + 512 = 2076 B
    assert train_memory(cfg, 2, 8, weights="bf16", activation_checkpointing=True, lora_rank=2) == {
        "weights": 22176 * 2 + 2144 * 4, "grads": 2144 * 4, "optimizer": 2144 * 8,
        "activations": 16 * 2076, "total": 44352 + 8576 + 8576 + 17152 + 33216}
    bf16 = train_memory(cfg, 2, 8, weights="bf16")  # full: weights, grads and AdamW moments all bf16, no master
    assert (bf16["weights"], bf16["grads"], bf16["optimizer"]) == (44352, 44352, 88704)
    with pytest.raises(ValueError, match="weights"):
        train_memory(cfg, 1, weights="fp16")
    text = describe(cfg, weights="bf16", lora_rank=2, activation_checkpointing=True)
    assert "trained in fp32: weights, grads, optimizer states" in text and "LoRA rank 2 on wq,wk,wv,wo,w1,w2,w3" in text
    assert "no fp32 master copy" in describe(cfg, weights="bf16")


def test_train_memory_per_gpu_under_ddp_and_fsdp_by_hand():
    cfg = tiny(n_kv_heads=2, head_dim=16, ffn_hidden=40)  # as above: 22,176 params, 10,048 a layer, 5,888 B a token
    # 4 GPUs, batch 8 x 8: each GPU's activations are 2 sequences x 8 tokens x 5888 B
    ddp = train_memory(cfg, 8, 8, gpus=4)
    assert ddp == {"weights": 88704, "grads": 88704, "optimizer": 2 * 88704, "activations": 16 * 5888,
                   "total": 4 * 88704 + 16 * 5888}
    # fsdp: a quarter of weights, grads and AdamW moments; gathered: the root (tied embedding 64 x 32 + final norm
    # 32 = 2080) and one block (10048), whole, in fp32
    fsdp = train_memory(cfg, 8, 8, gpus=4, parallel="fsdp")
    assert fsdp == {"weights": 22176, "grads": 22176, "optimizer": 44352, "activations": 16 * 5888,
                    "gathered": (2080 + 10048) * 4, "total": 22176 * 4 + 16 * 5888 + 12128 * 4}
    assert train_memory(cfg, 8, 8, parallel="fsdp")["weights"] == 88704  # one GPU: nothing to shard with
    with pytest.raises(ValueError, match="lora_rank: LoRA trains under ddp"):
        train_memory(cfg, 8, 8, gpus=2, parallel="fsdp", lora_rank=2)
    with pytest.raises(ValueError, match="parallel"):
        train_memory(cfg, 8, 8, parallel="zero3")
    assert "per GPU of 4 (fsdp)" in describe(cfg, gpus=4, parallel="fsdp")


def test_lora_params_match_peft():
    from peft import LoraConfig, get_peft_model

    cfg = tiny(n_kv_heads=2, head_dim=16, ffn_hidden=40)
    model = get_peft_model(Transformer(cfg), LoraConfig(r=2, target_modules=list(LORA_TARGETS)))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == lora_params(cfg, 2)
