"""Our Triton kernels (kernels/cuda/) against their PyTorch references, forward and backward.

Two ways they run. On CPU tensors, in Triton's interpreter: that needs TRITON_INTERPRET=1 before triton
itself is imported (Triton's own library functions, tl.sum, tl.zeros..., are jit functions too, made
interpreted or compiled at import), and it would make every later Triton kernel of the process
interpreted. So a normal `pytest tests/` run does not switch its own process: `test_interpreter_run`
runs this file again in a child pytest with TRITON_INTERPRET=1, where the tests take device "cpu" (and
its failures are that test's message). With a CUDA GPU, the parent process also runs every test on
"cuda", compiled, without the interpreter. `test_kernels_compile_for_cuda` compiles each kernel to a
cubin (sm_80, sm_90) without a GPU: what the interpreter ran is also valid Triton for the hardware.

Tolerances. fp32: the kernels compute what the reference computes, in another summation order, so the
defaults of torch.testing.assert_close for fp32 (rtol 1.3e-6, atol 1e-5), or 1e-5 for sums over rows.
bf16: the kernels compute in fp32 and round once, so against an fp32 computation on the same bf16 inputs
an element may be off by half a bf16 ulp: relative 2^-8 (+ an fp32-noise atol). Eager bf16 ops round
more often (the LM head's dW is one bf16 matmul where ours sums chunks in fp32), so against eager bf16 the
bound is a few roundings: 4 * 2^-8.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"  # this process's triton runs kernels on CPU tensors
triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
DEVICES = (["cpu"] if INTERPRETER else
           [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))])
BF16_ULP = 2.0 ** -8  # bf16's unit roundoff (8 significant bits): the relative error of one rounding to nearest
# The GPU rounds fp32 -> bf16 to nearest; Triton 3.7.1's interpreter truncates (its cast_impl passes no
# rounding mode), which is off by up to a whole ulp: twice that.
ROUND_ONCE = 2 * BF16_ULP if INTERPRETER else BF16_ULP

# The kernel modules: interpreted in the child run, compiled (for the GPU) in the parent.
K = SimpleNamespace(**{name: importlib.import_module(f"chatpipe.kernels.cuda.{name}")
                       for name in ("cross_entropy", "ternary_matmul")})


@pytest.mark.skipif(INTERPRETER, reason="this is the interpreter run")
@pytest.mark.integration
def test_interpreter_run():
    """Every test below on CPU tensors, in a child pytest whose triton interprets (< 60 s on 2 cores)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(Path(__file__).resolve())]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert " passed" in out and "failed" not in out, out
    print(f"interpreter run: {out.strip().splitlines()[-1]} [{time.perf_counter() - start:.1f}s]")


def grads(out: torch.Tensor, inputs, seed: int = 1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return torch.autograd.grad(out, inputs, g)


def leaf(*shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale
    return x.to(device=device, dtype=dtype).requires_grad_()


# ---------------------------------------------------------------- linear + cross-entropy

def ce_inputs(n, d, v, device, dtype=torch.float32, ignore_every=5):
    h, w = leaf(n, d, dtype=dtype, device=device), leaf(v, d, dtype=dtype, device=device, seed=1, scale=0.5)
    t = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(2))
    t[::ignore_every] = -1
    t[1], t[2] = 0, v - 1  # both ends of the vocab
    return h, w, t.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,d,v,chunk", [(50, 24, 517, 16),    # odd vocab, last chunk of 2 rows
                                         (9, 8, 4099, 4),      # vocab over one 4096 block: the online lse loop
                                         (13, 16, 97, 64)])    # one chunk bigger than the batch
def test_linear_cross_entropy_fp32_matches_torch(device, n, d, v, chunk):
    k = K.cross_entropy
    h, w, t = ce_inputs(n, d, v, device)
    loss, ref = k.linear_cross_entropy(h, w, t, chunk=chunk), F.cross_entropy(h @ w.T, t, ignore_index=-1)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss, ref)
    dh, dw = torch.autograd.grad(loss, (h, w))
    rdh, rdw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(dh, rdh)
    torch.testing.assert_close(dw, rdw)
    assert (dh[t == -1] == 0).all()  # ignored rows get no gradient


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_chunk_and_all_ignored_chunks(device):
    """The chunk size changes nothing; a chunk whose every target is ignored contributes nothing."""
    k = K.cross_entropy
    h, w, t = ce_inputs(24, 16, 130, device)
    t[8:16] = -1  # the whole second chunk of 8
    ref = F.cross_entropy(h @ w.T, t, ignore_index=-1)
    rdh, rdw = torch.autograd.grad(ref, (h, w))
    for chunk in (1, 8, 24):
        loss = k.linear_cross_entropy(h, w, t, chunk=chunk)
        torch.testing.assert_close(loss, ref)
        dh, dw = torch.autograd.grad(loss, (h, w))
        torch.testing.assert_close(dh, rdh)
        torch.testing.assert_close(dw, rdw)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_tied_embedding(device):
    """The model's tied LM head: the same matrix embeds the tokens and scores them; its grads add up."""
    k = K.cross_entropy
    v, d = 61, 16
    emb = leaf(v, d, device=device, scale=0.5)
    proj = leaf(d, d, device=device, seed=3, scale=0.3)
    idx = torch.randint(0, v, (21,), generator=torch.Generator().manual_seed(4)).to(device)
    t = torch.roll(idx, -1)
    t[-1] = -1

    def loss_with(fn):
        h = torch.tanh(F.embedding(idx, emb) @ proj)
        return fn(h, emb, t)

    loss = loss_with(lambda h, w, t: k.linear_cross_entropy(h, w, t, chunk=8))
    ref = loss_with(k.linear_cross_entropy_reference)
    torch.testing.assert_close(loss, ref)
    for ours, theirs in zip(torch.autograd.grad(loss, (emb, proj)), torch.autograd.grad(ref, (emb, proj))):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_cross_entropy_bf16(device):
    """bf16 h and weight, as under autocast: logits in bf16 (like lm_head), upcast for the loss."""
    k = K.cross_entropy
    h, w, t = ce_inputs(40, 32, 300, device, dtype=torch.bfloat16, ignore_every=3)
    loss = k.linear_cross_entropy(h, w, t, chunk=16)
    ref = k.linear_cross_entropy_reference(h, w, t)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)  # same bf16 logits, fp32 loss: summation order
    dh, dw = torch.autograd.grad(loss, (h, w))
    rdh, rdw = torch.autograd.grad(ref, (h, w))
    assert dh.dtype == dw.dtype == torch.bfloat16
    torch.testing.assert_close(dh, rdh, rtol=4 * BF16_ULP, atol=4 * BF16_ULP * rdh.abs().max().item())
    torch.testing.assert_close(dw, rdw, rtol=4 * BF16_ULP, atol=4 * BF16_ULP * rdw.abs().max().item())


@pytest.mark.skipif(not INTERPRETER, reason="runs in the interpreter run")
def test_linear_cross_entropy_rejects_bad_shapes():
    k = K.cross_entropy
    with pytest.raises(ValueError, match="want"):
        k.linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk"):
        k.linear_cross_entropy(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long), chunk=0)


# ---------------------------------------------------------------- ternary matmul

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,n,k_", [(1, 70, 45),      # decode: one row; K % 4 != 0, rows straddle bytes
                                    (19, 33, 150),    # several K blocks, a partial N block
                                    (70, 130, 64)])   # several M and N blocks
def test_ternary_matmul_fp32_matches_unpacked(device, m, n, k_):
    from chatpipe.model.quant import pack_ternary

    kern = K.ternary_matmul
    packed, scale, shape = pack_ternary(torch.randn(n, k_, generator=torch.Generator().manual_seed(5)))
    x = torch.randn(m, k_, generator=torch.Generator().manual_seed(6))
    ref = kern.ternary_matmul_reference(x, packed, scale, shape)
    y = kern.ternary_matmul(x.to(device), packed.to(device), scale, shape)
    assert y.shape == (m, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_ternary_matmul_bf16_and_leading_dims(device):
    from chatpipe.model.quant import pack_ternary

    kern = K.ternary_matmul
    packed, scale, shape = pack_ternary(torch.randn(40, 37, generator=torch.Generator().manual_seed(7)))
    x = torch.randn(2, 5, 37, generator=torch.Generator().manual_seed(8)).bfloat16()
    y = kern.ternary_matmul(x.to(device), packed.to(device), scale, shape)
    assert y.shape == (2, 5, 40) and y.dtype == torch.bfloat16
    # both sum exactly-representable products in fp32 and round once to bf16: at most one ulp apart
    torch.testing.assert_close(y.cpu(), kern.ternary_matmul_reference(x, packed, scale, shape),
                               rtol=2 * BF16_ULP, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_served_ternary_linear_on_cuda_sums_the_integer_codes(device):
    """kernels/ternary_matmul.py's cuda entry (what a ternary model served on CUDA runs: activation codes into
    this kernel, then the scales) gives the CPU's integer path's output: fp32 sums of integers are exact."""
    from chatpipe.kernels import ternary_cpu
    from chatpipe.kernels.ternary_codes import pack_codes
    from chatpipe.kernels.ternary_matmul import KERNELS

    cuda = KERNELS["cuda"]()
    codes = torch.randint(-1, 2, (40, 96), generator=torch.Generator().manual_seed(9))
    packed, shape = pack_codes(codes), (40, 96)
    scale = torch.rand(40, generator=torch.Generator().manual_seed(10)) + 0.1
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(11))
    y = cuda.linear(x.to(device), cuda.store(packed.to(device), shape), scale.to(device), shape)
    torch.testing.assert_close(y.cpu(), ternary_cpu.linear_int8(x, ternary_cpu.store_int8(packed, shape), scale, shape),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not INTERPRETER, reason="runs in the interpreter run")
def test_ternary_matmul_rejects_mismatched_inputs():
    from chatpipe.model.quant import pack_ternary

    kern = K.ternary_matmul
    packed, scale, shape = pack_ternary(torch.randn(8, 12))
    with pytest.raises(ValueError, match="features"):
        kern.ternary_matmul(torch.randn(3, 11), packed, scale, shape)
    with pytest.raises(ValueError, match="uint8 bytes"):
        kern.ternary_matmul(torch.randn(3, 12), packed[:-1], scale, shape)


# ---------------------------------------------------------------- valid Triton for the GPU

def _ternary(dt: str, precision: str):
    return ("ternary_matmul", "_ternary_matmul",
            {"X": f"*{dt}", "P": "*u8", "Y": f"*{dt}", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32",
             "stride_ym": "i32", "scale": "fp32"},
            {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "PRECISION": precision})


SIGNATURES = [  # (module, kernel, argument types as a launch on such tensors specializes them, constexprs)
    ("cross_entropy", "_ce_fwd", {"LOGITS": "*bf16", "stride": "i32", "TARGETS": "*i64", "LOSS": "*fp32",
                                  "LSE": "*fp32", "V": "i32"}, {"BLOCK_V": 4096}),
    ("cross_entropy", "_ce_bwd", {"LOGITS": "*fp32", "stride": "i32", "TARGETS": "*i64", "LSE": "*fp32",
                                  "SCALE": "*fp32", "V": "i32"}, {"BLOCK_V": 4096}),
    _ternary("fp32", "ieee"),
    _ternary("bf16", "tf32"),
]


@pytest.mark.skipif(INTERPRETER, reason="needs triton's compiler, not its interpreter")
@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_for_cuda(arch):
    """Ahead-of-time compilation to a cubin (Triton's own ptxas) for Ampere and Hopper; needs no GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for module, name, types, consts in SIGNATURES:
        fn = getattr(getattr(K, module), name)
        signature = {**types, **{c: "constexpr" for c in consts}}
        assert list(signature) == fn.arg_names, name
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                                  target=GPUTarget("cuda", arch, 32))
        assert compiled.asm["cubin"], name


@pytest.mark.skipif(not INTERPRETER, reason="runs in the interpreter run")
def test_the_model_with_triton_kernels_computes_the_same_loss_and_grads():
    """model.use_kernels("triton"): the head + loss through our kernel, same numbers."""
    from chatpipe.model.config import ModelConfig
    from chatpipe.model.transformer import Transformer

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, n_layer=2, n_embd=32, n_head=4, n_kv_heads=2, block_size=16, qk_norm=True)
    ours, ref = Transformer(config), Transformer(config)
    ref.load_state_dict(ours.state_dict())
    ours.use_kernels("triton")
    x, y = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    y[0, :4] = -1
    (logits, loss), (_, ref_loss) = ours(x, y), ref(x, y)
    assert logits is None and torch.allclose(loss, ref_loss, atol=1e-5)
    loss.backward()
    ref_loss.backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    assert torch.allclose(ours(x)[0], ref(x)[0], atol=1e-5)  # without targets: the logits, as torch's
