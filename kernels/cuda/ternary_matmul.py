"""Matmul with 2-bit packed ternary weights, unpacked inside the kernel.

Why: a ternary student is published packed (kernels/ternary_codes.py's layout, 16x smaller than fp32), and
at decode time (M = a few tokens) a matmul is bound by reading the weight: reading 2 bits instead of 16 or 32
is the speed-up, and unpacking to floats first would give the memory back. Each tile of weights is decoded
in registers:

    weight (n, k) is flat index i = n * K + k of the [N, K] weight: code = byte[i // 4] >> 2 * (i % 4) & 3
    y[m, n] = scale * sum_k x[m, k] * (code(n, k) - 1)

- Tiles of BLOCK_M x BLOCK_N outputs, BLOCK_K at a time, tl.dot on fp32 operands with fp32 accumulation
  (TF32 tensor cores for bf16/fp16 x, exact here: -1/0/+1 and bf16/fp16 values fit TF32's mantissa; a bf16
  tl.dot would be wrong in Triton's interpreter). The scale is applied once at the end.
- Runtime use: a ternary model served on CUDA runs every block linear through it (kernels/ternary_matmul.py's
  cuda entry), on the activations' int8 codes as fp32, so the sums are exact integers.
- `ternary_matmul_reference` is `x @ unpack_ternary(packed, scale, shape).T`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from chatpipe.kernels.ternary_codes import unpack_ternary


@triton.jit
def _ternary_matmul(X, P, Y, M, N, K, stride_xm, stride_ym, scale,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        x = tl.load(X + rm[:, None].to(tl.int64) * stride_xm + k[None, :],
                    mask=(rm[:, None] < M) & (k[None, :] < K), other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_K]
        i = rn[None, :].to(tl.int64) * K + k[:, None]                              # [BLOCK_K, BLOCK_N] flat index
        byte = tl.load(P + (i >> 2), mask=(k[:, None] < K) & (rn[None, :] < N), other=1)  # code 1 = weight 0
        code = (byte.to(tl.int32) >> ((i & 3) * 2).to(tl.int32)) & 3
        w = code.to(tl.float32) - 1.0
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    y = acc * scale
    tl.store(Y + rm[:, None].to(tl.int64) * stride_ym + rn[None, :], y.to(Y.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def ternary_matmul(x: torch.Tensor, packed: torch.Tensor, scale: float, shape: tuple[int, int],
                   block_n: int = 64, block_k: int = 64) -> torch.Tensor:
    """x [..., K] (fp32, bf16 or fp16) @ the packed ternary weight [N, K] transposed -> [..., N] in x's dtype."""
    n, k = shape
    if x.shape[-1] != k:
        raise ValueError(f"ternary_matmul: x has {x.shape[-1]} features, the weight {tuple(shape)}")
    if packed.dtype != torch.uint8 or packed.numel() != math.ceil(n * k / 4):
        raise ValueError(f"ternary_matmul: packed must be {math.ceil(n * k / 4)} uint8 bytes for {tuple(shape)}, "
                         f"got {packed.numel()} {packed.dtype}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"ternary_matmul: x is {x.dtype}; want float32, bfloat16 or float16")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    block_m = 16 if m <= 16 else 64  # tl.dot needs >= 16; decode (a few rows) wastes least at 16
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    if m and n:
        _ternary_matmul[grid](x2, packed.contiguous(), y, m, n, k, x2.stride(0), y.stride(0), float(scale),
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                              PRECISION="ieee" if x.dtype == torch.float32 else "tf32")  # tf32: exact for bf16/fp16 x
    return y.view(*x.shape[:-1], n)


def ternary_matmul_reference(x: torch.Tensor, packed: torch.Tensor, scale: float, shape: tuple[int, int]) -> torch.Tensor:
    """The same in eager PyTorch: unpack the whole weight to fp32 (kernels/ternary_codes.py), then a matmul."""
    return (x.float() @ unpack_ternary(packed, scale, shape).T).to(x.dtype)
