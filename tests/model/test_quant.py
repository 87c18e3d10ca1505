"""Ternary BitNet b1.58 layers (model/quant.py): the quantizers, STE training, 2-bit packing, config."""
import pytest
import torch

from chatpipe.kernels.ternary_codes import unpack_ternary
from chatpipe.model.config import ModelConfig, MoEConfig
from chatpipe.model.quant import (
    BitLinear,
    pack_ternary,
    packed_state_dict,
    quantize_activations,
    ternary_weight,
)
from chatpipe.model.transformer import Transformer

BLOCK_LINEARS = ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w1", "mlp.w2", "mlp.w3")


def tiny(quant="ternary", **kw):
    return ModelConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4, block_size=32, quant=quant, **kw)


def test_weights_take_three_values_times_scale():
    w = torch.randn(48, 37)
    q = ternary_weight(w)
    scale = w.abs().mean() + 1e-5
    assert len(q.unique()) == 3
    assert torch.equal(q.unique(), torch.tensor([-1.0, 0.0, 1.0]) * scale)


def test_activations_quantized_per_token_to_256_levels():
    x = torch.randn(3, 5, 200) * torch.logspace(-3, 3, 5)[None, :, None]  # tokens of very different scales
    q = quantize_activations(x)
    for row, qrow in zip(x.reshape(-1, 200), q.reshape(-1, 200)):
        levels = (qrow * 127 / row.abs().max()).round()
        assert torch.allclose(levels, qrow * 127 / row.abs().max(), atol=1e-3)
        assert len(qrow.unique()) <= 256 and levels.min() >= -128 and levels.max() <= 127
        assert (qrow - row).abs().max() <= row.abs().max() / 127 * 0.5 + 1e-6


def test_ste_gradients_reach_latent_weights():
    layer = BitLinear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bias"):
        BitLinear(4, 4, bias=True)


def test_ternary_model_uses_bitlinear_in_blocks_only():
    m = Transformer(tiny())
    for block in m.blocks:
        for name in BLOCK_LINEARS:
            assert isinstance(block.get_submodule(name), BitLinear)
    assert type(m.lm_head) is torch.nn.Linear
    assert not any(isinstance(x, BitLinear) for x in Transformer(tiny(quant=None)).modules())


def test_tiny_ternary_model_trains():
    torch.manual_seed(0)
    m = Transformer(tiny())
    idx = torch.randint(0, 97, (4, 32))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses


@pytest.mark.parametrize("shape", [(8, 8), (5, 7), (3,), (1, 1)])
def test_pack_unpack_round_trip_exact(shape):
    w = torch.randn(shape)
    packed, scale, got_shape = pack_ternary(w)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-w.numel() // 4) and got_shape == shape
    assert torch.equal(unpack_ternary(packed, scale, got_shape), ternary_weight(w))


def test_packed_linear_weights_are_over_10x_smaller():
    m = Transformer(tiny())
    state = packed_state_dict(m)
    for i in range(2):
        for name in BLOCK_LINEARS:
            key = f"blocks.{i}.{name}.weight"
            fp32 = m.get_parameter(key).numel() * 4
            packed = sum(state[k].numel() * state[k].element_size()
                         for k in (key, f"{key[:-len('weight')]}weight_scale"))
            assert fp32 >= 10 * packed


def test_float_checkpoint_loads_into_ternary_model():
    float_model, ternary = Transformer(tiny(quant=None)), Transformer(tiny())
    ternary.load_state_dict(float_model.state_dict())
    assert torch.equal(ternary.blocks[0].attn.wq.weight, float_model.blocks[0].attn.wq.weight)


def test_ternary_model_has_float_models_parameters_and_init():
    torch.manual_seed(0)
    float_state = Transformer(tiny(quant=None)).state_dict()
    torch.manual_seed(0)
    ternary_state = Transformer(tiny()).state_dict()
    assert float_state.keys() == ternary_state.keys()
    assert all(torch.equal(float_state[k], ternary_state[k]) for k in float_state)


def test_config_validates_quant():
    with pytest.raises(ValueError, match="quant"):
        tiny(quant="bogus")
    with pytest.raises(ValueError, match="quant"):
        tiny(moe=MoEConfig(n_experts=4, top_k=2))


@pytest.mark.parametrize("quant", [None, "ternary"])
def test_config_round_trips_quant(quant):
    c = tiny(quant=quant)
    assert c.to_dict()["quant"] == quant
    assert ModelConfig.from_dict(c.to_dict()) == c


def test_ternary_models_are_refused_where_they_would_run_as_float():
    from chatpipe.tasks.publish.hf_export import unsupported

    model = Transformer(ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, block_size=16, quant="ternary")).eval()
    assert "ternary" in unsupported(model)  # model/decode.py runs them (tests/serve/test_serve.py's decoder tests)
