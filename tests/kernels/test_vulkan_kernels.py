"""Our GLSL kernels (kernels/vulkan/*.comp) on a real Vulkan device (Mesa's lavapipe in CI), against torch on CPU.

No mocks: glslc compiles the shaders, the `vulkan` package dispatches them, and the references are
torch.optim.AdamW and `x @ kernels.ternary_codes.unpack_ternary(...).T`.

Tolerances. AdamW: the shader does torch's operations in torch's order in float32, with the scalar factors
(1 - b1, lr / bc1, sqrt(bc2), ...) computed in float64 on the host as torch does, but torch's CPU kernels use fma
in places (vectorized lerp) and Vulkan allows 2.5 ulp for division and ~3 ulp for sqrt; so about 1 element in 5
differs by an ulp or so. Errors are measured against each element's running scale S (max over the steps of
|old| + |new|, plus |g| for m and g^2 for v), because when the two terms of an update nearly cancel the result is
small and its error is an ulp of the terms, not of the result. Measured on lavapipe over 6 steps: <= 2.1 ulp of S
for these sizes, 7.6 ulp at 1M elements. Asserted: 32 ulp of S; a real bug (missing bias correction, decay
applied twice, m and v swapped) is off by ~lr = 1e-2, > 1000x more.
Ternary matmul: products x * {-1, 0, +1} are exact, so the only difference is the order of the float32
additions; the classic bound |error| <= 2 * K * u * sum_k |x_k| |w_k| (u = 2^-24, once for each side) holds for any
order, and is what is asserted (a wrong code or a wrong row offset is off by ~scale * |x|, orders larger).
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from chatpipe.kernels.ternary_codes import unpack_ternary
from chatpipe.kernels.vulkan import runtime as rt
from chatpipe.model.quant import pack_ternary

pytestmark = pytest.mark.skipif(
    not rt.available(),
    reason=f"no Vulkan kernels here: {rt.unavailable_reason()} (CI: apt-get install mesa-vulkan-drivers "
           "libvulkan1 glslc; pip install 'chat-pipeline[vulkan]')")

HP = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
U = 2.0 ** -24


def awkward_grads(rng: np.random.Generator, shape) -> np.ndarray:
    """Gradients over 7 orders of magnitude, with exact zeros (v = 0: the update is 0 / eps)."""
    g = rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 2, shape)
    g[rng.random(shape) < 0.05] = 0.0
    return g.astype(np.float32)


@pytest.mark.parametrize("shape", [(4099,), (33, 65), (1,)])
def test_adamw_matches_torch(shape):
    rng = np.random.default_rng(sum(shape))
    p = rng.standard_normal(shape).astype(np.float32)
    m, v = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    ref = torch.nn.Parameter(torch.from_numpy(p.copy()))
    opt = torch.optim.AdamW([ref], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=HP["weight_decay"])
    scale = [np.zeros(shape)] * 3   # running S for p, m, v
    for step in range(1, 7):
        lr = HP["lr"] * step / 6   # a warmup: lr changes every step, as under the schedule
        opt.param_groups[0]["lr"] = lr
        g = awkward_grads(rng, shape)
        ref.grad = torch.from_numpy(g.copy())
        state = opt.state.get(ref) or {}
        old = [ref.detach().numpy().copy(), state.get("exp_avg", torch.zeros(shape)).numpy().copy(),
               state.get("exp_avg_sq", torch.zeros(shape)).numpy().copy()]
        opt.step()
        assert rt.adamw_step(p, g, m, v, **{**HP, "lr": lr}, step=step) is None   # in place
        state = opt.state[ref]
        want = [ref.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()]
        extra = [0.0, np.abs(g), np.square(g, dtype=np.float64)]
        for i, (name, got) in enumerate(zip("pmv", (p, m, v))):
            scale[i] = np.maximum(scale[i], np.abs(old[i]) + np.abs(want[i]) + extra[i])
            err = np.abs(got.astype(np.float64) - want[i])
            ulps = (err / (U * scale[i] + 1e-45)).max()
            assert ulps <= 32, f"step {step}: {name} off by {ulps:.1f} ulp of its scale (max abs {err.max():.3g})"


def test_adamw_chunked_matches_whole(monkeypatch):
    """Arrays larger than one buffer go through in chunks; the result is the same as in one dispatch."""
    rng = np.random.default_rng(1)
    n = 10_007
    p, g = rng.standard_normal(n).astype(np.float32), awkward_grads(rng, n)
    m, v = (np.abs(rng.standard_normal(n)).astype(np.float32) for _ in range(2))
    whole = [a.copy() for a in (p, m, v)]
    rt.adamw_step(whole[0], g, whole[1], whole[2], **HP, step=3)
    monkeypatch.setattr(rt, "MAX_CHUNK_ELEMS", 1000)   # 11 chunks, the last one partial
    rt.adamw_step(p, g, m, v, **HP, step=3)
    for got, want in zip((p, m, v), whole):
        np.testing.assert_array_equal(got, want)


def test_adamw_rejects_bad_inputs():
    a = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="float32"):
        rt.adamw_step(a.astype(np.float64), a, a.copy(), a.copy(), **HP, step=1)
    with pytest.raises(ValueError, match="sizes differ"):
        rt.adamw_step(a, np.zeros(9, np.float32), a.copy(), a.copy(), **HP, step=1)
    with pytest.raises(ValueError, match="step"):
        rt.adamw_step(a, a.copy(), a.copy(), a.copy(), **HP, step=0)


def reference(x: np.ndarray, packed: torch.Tensor, scale: float, shape) -> tuple[np.ndarray, np.ndarray]:
    """(x @ W.T in float64 from the float32 inputs, the rounding bound 2 K u |x| @ |W|.T + an ulp of the result)."""
    w = unpack_ternary(packed, scale, shape).numpy().astype(np.float64)
    y = x.astype(np.float64) @ w.T
    bound = 2 * shape[1] * U * (np.abs(x).astype(np.float64) @ np.abs(w).T) + 2 * U * np.abs(y)
    return y, bound


@pytest.mark.parametrize("m, n, k", [
    (1, 1, 1),        # smallest
    (5, 33, 7),       # K % 4 == 3: rows start mid-byte; N, M not multiples of the 32-wide workgroup tile
    (17, 65, 130),    # K % 16 == 2: rows start mid-word; a tail block
    (33, 100, 257),   # K % 4 == 1
    (64, 96, 64),     # everything aligned
    (3, 7, 16 * 9 + 15),
])
def test_ternary_matmul_matches_unpacked(m, n, k):
    gen = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    w = torch.randn(n, k, generator=gen)
    packed, scale, shape = pack_ternary(w)
    x = torch.randn(m, k, generator=gen).numpy()
    y = rt.ternary_matmul(x, packed.numpy(), scale, shape)
    assert y.shape == (m, n) and y.dtype == np.float32
    want, bound = reference(x, packed, scale, shape)
    err = np.abs(y - want)
    assert (err <= bound).all(), f"max err {err.max():.3g}, worst excess {(err - bound).max():.3g}"
    # and against the float32 torch reference the brief names, at the same bound
    ref32 = x @ unpack_ternary(packed, scale, shape).numpy().T
    assert (np.abs(y - ref32) <= 2 * bound + 1e-30).all()


def test_ternary_matmul_row_chunks_and_torch_input(monkeypatch):
    """x taller than one dispatch goes in row blocks; packed may be the torch tensor pack_ternary returns."""
    w = torch.randn(40, 37)
    packed, scale, shape = pack_ternary(w)
    x = np.random.default_rng(2).standard_normal((101, 37)).astype(np.float32)
    whole = rt.ternary_matmul(x, packed, scale, shape)
    monkeypatch.setattr(rt, "MAX_CHUNK_ELEMS", 40 * 10)   # 10 rows per dispatch
    np.testing.assert_array_equal(rt.ternary_matmul(x, packed, scale, shape), whole)


def test_ternary_matmul_rejects_bad_inputs():
    packed, scale, shape = pack_ternary(torch.randn(8, 6))
    with pytest.raises(ValueError, match=r"x must be \[M, 6\]"):
        rt.ternary_matmul(np.zeros((2, 5), np.float32), packed, scale, shape)
    with pytest.raises(ValueError, match="needs 12"):
        rt.ternary_matmul(np.zeros((2, 6), np.float32), packed[:5], scale, shape)


def test_compile_error_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATPIPE_SPIRV_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.comp"
    bad.write_text("#version 450\nlayout(local_size_x = 1) in;\nvoid main() { undeclared = 1.0; }\n")
    with pytest.raises(rt.ShaderCompileError) as e:
        rt.compile_shader(bad)
    msg = str(e.value)
    assert "\n" not in msg and "bad.comp" in msg and "undeclared" in msg, msg
    assert not list((tmp_path / "cache").glob("*.spv"))   # nothing half-written is cached
    with pytest.raises(rt.ShaderCompileError, match="cannot read shader"):
        rt.compile_shader(tmp_path / "missing.comp")


def test_missing_glslc_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATPIPE_SPIRV_CACHE", str(tmp_path / "cache"))   # empty cache: must compile
    monkeypatch.setenv("PATH", str(tmp_path))                              # and glslc is not on PATH
    with pytest.raises(rt.ShaderCompileError, match=r"glslc not found on PATH.*apt-get install glslc"):
        rt.compile_shader(rt.SHADER_DIR / "adamw.comp")


def test_spirv_cache_is_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATPIPE_SPIRV_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "k.comp"
    body = "#version 450\nlayout(local_size_x = {}) in;\nvoid main() {{}}\n"
    src.write_text(body.format(1))
    first = rt.compile_shader(src)
    assert first[:4] == b"\x03\x02\x23\x07"   # SPIR-V magic, little-endian
    (spv,) = (tmp_path / "cache").glob("k-*.spv")
    mtime = os.stat(spv).st_mtime_ns
    time.sleep(0.01)
    assert rt.compile_shader(src) == first and os.stat(spv).st_mtime_ns == mtime   # a hit, not a recompile
    src.write_text(body.format(2))
    assert rt.compile_shader(src) != first and len(list((tmp_path / "cache").glob("k-*.spv"))) == 2
