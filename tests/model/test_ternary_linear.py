"""Ternary inference on integer codes (model/ternary_linear.py, kernels/ternary_cpu.c, kernels/ternary_matmul.py):
the C kernel against the same math in torch, TernaryLinear against BitLinear, fusing, loading a packed model
with no float block weights and its memory, and the device registry (CUDA where there is one)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from chatpipe.kernels import ternary_cpu
from chatpipe.kernels.ternary_codes import pack_codes, packed_rows
from chatpipe.kernels.ternary_matmul import kernel_for
from chatpipe.model.config import ModelConfig
from chatpipe.model.decode import Decoder
from chatpipe.model.quant import BitLinear, packed_state_dict, quantize_activations
from chatpipe.model.ternary_linear import TernaryLinear, held_bytes, load_ternary
from chatpipe.model.transformer import Transformer

ROOT = Path(__file__).resolve().parents[2]
needs_c = pytest.mark.skipif(ternary_cpu.library() is None, reason="no C compiler: the torch fallback runs")


def config(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 97, "n_layer": 2, "n_embd": 128, "n_head": 4, "block_size": 32,
                          "quant": "ternary", **kw})


def packed_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.randint(-1, 2, (n, k), generator=torch.Generator().manual_seed(seed))
    return codes, packed_rows(pack_codes(codes), (n, k))


@needs_c
@pytest.mark.parametrize("m, n, k", [(1, 5, 4), (3, 17, 64), (2, 9, 96), (8, 33, 200), (1, 384, 128),
                                     (16, 100, 768), (4, 2304, 768)])  # tails past the 64-blocks; threaded
def test_c_kernel_equals_the_torch_integer_path_bit_for_bit(m, n, k):
    """Same codes, same int32 sums, same scale arithmetic: equal outputs, including tokens 1e-3 to 1e2 in size."""
    codes, packed = packed_weight(n, k, seed=m * n + k)
    scale = torch.rand(n, generator=torch.Generator().manual_seed(1)) + 0.1
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2)) * torch.logspace(-3, 2, m)[:, None]
    int8 = ternary_cpu.store_int8(pack_codes(codes), (n, k))
    assert torch.equal(int8, codes.to(torch.int8))
    y = ternary_cpu.linear(x, packed, scale, (n, k))
    assert torch.equal(y, ternary_cpu.linear_int8(x, int8, scale, (n, k)))
    bitlinear = quantize_activations(x) @ (codes.float() * scale[:, None]).T  # BitLinear's float arithmetic
    torch.testing.assert_close(y, bitlinear, rtol=1e-5, atol=1e-5 * bitlinear.abs().max().item())


@pytest.mark.parametrize("k", [64, 100])
def test_ternary_linear_computes_bitlinears_forward(k):
    torch.manual_seed(0)
    qat = BitLinear(k, 48)
    x = torch.randn(2, 5, k)
    linear = TernaryLinear.from_bitlinear(qat)
    assert linear.weight_codes.dtype in (torch.uint8, torch.int8) and not linear.weight_codes.is_floating_point()
    with torch.no_grad():
        torch.testing.assert_close(linear(x), qat(x), rtol=1e-5, atol=1e-6)


def test_fused_linears_compute_theirs_side_by_side_and_hold_their_codes_once():
    torch.manual_seed(0)
    linears = [TernaryLinear.from_bitlinear(BitLinear(64, n)) for n in (32, 16, 16)]
    x = torch.randn(3, 64)
    alone = torch.cat([m(x) for m in linears], dim=-1)
    fused = TernaryLinear.fuse(*linears)
    assert torch.equal(fused(x), alone)
    assert torch.equal(torch.cat([m(x) for m in linears], dim=-1), alone)  # the originals, now views, unchanged
    storage = fused.weight_codes.untyped_storage().data_ptr()
    assert all(m.weight_codes.untyped_storage().data_ptr() == storage for m in linears)
    assert held_bytes(fused, *linears) == held_bytes(fused)


@pytest.mark.parametrize("tie", [True, False])
def test_a_packed_model_loads_onto_integer_codes_with_the_qat_models_logits(tie):
    torch.manual_seed(0)
    qat = Transformer(config(tie_embeddings=tie)).eval()
    loaded = Transformer(config(tie_embeddings=tie)).eval()
    load_ternary(loaded, packed_state_dict(qat))
    assert not any(isinstance(m, BitLinear) for m in loaded.modules())
    assert sum(isinstance(m, TernaryLinear) for m in loaded.modules()) == 7 * 2
    assert not any(b.is_floating_point() for m in loaded.modules() if isinstance(m, TernaryLinear)
                   for b in [m.weight_codes])
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tie
    idx = torch.randint(0, 97, (2, 16))
    with torch.inference_mode():
        torch.testing.assert_close(loaded(idx)[0], qat(idx)[0], rtol=0, atol=1e-4)
    Decoder(loaded)  # fusing re-points the linears at the fused codes: the packed weights stay the same
    again, expected = packed_state_dict(loaded), packed_state_dict(qat)
    assert again.keys() == expected.keys() and all(torch.equal(again[k], expected[k]) for k in expected)


def test_loaded_block_weights_take_under_a_quarter_of_fp32_with_the_decoder():
    """Block linears as held in RAM, codes and scales, before and after a Decoder fuses them: <= 1/4 of fp32."""
    torch.manual_seed(0)
    qat = Transformer(config(n_layer=2, n_embd=256)).eval()
    loaded = Transformer(config(n_layer=2, n_embd=256)).eval()
    load_ternary(loaded, packed_state_dict(qat))
    fp32 = 4 * sum(m.weight.numel() for m in qat.blocks.modules() if isinstance(m, BitLinear))
    before = held_bytes(loaded.blocks)
    decoder = Decoder(loaded)
    fused = [f.linear for layer in decoder.layers for f in (layer.qkv, layer.wo, layer.gate_up, layer.down)]
    after = held_bytes(loaded.blocks, *fused)
    assert before <= fp32 / 4 and after <= fp32 / 4, (before, after, fp32)
    assert after <= before * 1.01  # the fused codes are the model's, not a second copy


def test_unknown_device_types_are_refused():
    with pytest.raises(ValueError, match="no ternary kernel for meta"):
        kernel_for("meta")


def test_cpu_serving_never_imports_triton():
    code = ("import sys, torch\n"
            "from chatpipe.model.config import ModelConfig\n"
            "from chatpipe.model.transformer import Transformer\n"
            "from chatpipe.model.decode import Decoder\n"
            "from chatpipe.model.quant import packed_state_dict\n"
            "from chatpipe.model.ternary_linear import load_ternary\n"
            "c = ModelConfig(vocab_size=97, n_layer=1, n_embd=64, n_head=4, block_size=16, quant='ternary')\n"
            "m = Transformer(c).eval()\n"
            "load_ternary(m, packed_state_dict(Transformer(c)))\n"
            "assert len(list(Decoder(m).tokens([1, 2, 3], 4, temperature=0))) == 4\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_without_a_c_compiler_the_torch_int_mm_path_serves(tmp_path):
    """No compiler (CC fails, an empty kernel cache): int8 codes and torch._int_mm, the same tokens."""
    code = ("import torch\n"
            "from chatpipe.kernels import ternary_cpu\n"
            "from chatpipe.model.config import ModelConfig\n"
            "from chatpipe.model.transformer import Transformer\n"
            "from chatpipe.model.decode import Decoder\n"
            "from chatpipe.model.quant import packed_state_dict\n"
            "from chatpipe.model.ternary_linear import TernaryLinear, load_ternary\n"
            "assert ternary_cpu.library() is None\n"
            "c = ModelConfig(vocab_size=97, n_layer=1, n_embd=64, n_head=4, block_size=16, quant='ternary')\n"
            "torch.manual_seed(0)\n"
            "m = Transformer(c).eval()\n"
            "load_ternary(m, packed_state_dict(Transformer(c)))\n"
            "assert all(l.weight_codes.dtype == torch.int8 for l in m.modules() if isinstance(l, TernaryLinear))\n"
            "print(list(Decoder(m).tokens([1, 2, 3], 6, temperature=0)))\n")
    env = {**os.environ, "CC": "false", "XDG_CACHE_HOME": str(tmp_path)}
    fallback = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env=env)
    assert fallback.returncode == 0, fallback.stderr
    if ternary_cpu.library() is None:
        return  # this machine has no compiler either: nothing to compare with
    c_kernel = subprocess.run([sys.executable, "-c", code.replace("is None", "is not None").replace("torch.int8",
                                                                                                     "torch.uint8")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert c_kernel.returncode == 0, c_kernel.stderr
    assert fallback.stdout == c_kernel.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_runs_the_triton_kernel_on_packed_codes_with_the_cpu_logits():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    qat = Transformer(config()).eval()
    state = packed_state_dict(qat)
    cpu, gpu = Transformer(config()).eval(), Transformer(config()).eval().cuda()
    load_ternary(cpu, state)
    load_ternary(gpu, {k: v.cuda() for k, v in state.items()})
    assert all(m.weight_codes.dtype == torch.uint8 and m.weight_codes.is_cuda
               for m in gpu.modules() if isinstance(m, TernaryLinear))
    idx = torch.randint(0, 97, (2, 16))
    with torch.inference_mode():
        torch.testing.assert_close(gpu(idx.cuda())[0].cpu(), cpu(idx)[0], rtol=0, atol=1e-4)
        decoder = Decoder(gpu)
        tokens = list(decoder.tokens([1, 2, 3], 8, temperature=0))
    assert tokens == list(Decoder(cpu).tokens([1, 2, 3], 8, temperature=0))
