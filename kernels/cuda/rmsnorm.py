"""Fused RMSNorm, forward and backward, as Triton kernels.

Why: the model applies RMSNorm 2 * n_layer + 1 times per forward (more with QK-norm). In eager PyTorch
each one is several kernels (square, mean, rsqrt, two multiplies; more in the backward), each a full
read and write of the activations. These kernels read x once and write y once in the forward, and read
x and dy once and write dx once in the backward; statistics are kept in fp32 whatever the input dtype.

    y  = x * rstd * w,          rstd = 1 / sqrt(mean(x^2) + eps)           (per row, fp32)
    dx = rstd * (g - xhat * mean(g * xhat)),   g = dy * w,  xhat = x * rstd
    dw = sum over rows of dy * xhat   (per-program partial sums, then one torch sum: deterministic)

`rms_norm(x, weight, eps)` equals `torch.nn.functional.rms_norm(x, (D,), weight, eps)` for fp32 and bf16
inputs (to rounding: it rounds once, at the end, where eager rounds the normalized x before the weight
multiply), and is differentiable in x and weight. `rms_norm_reference` is the eager formula, in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, D, eps, BLOCK_D: tl.constexpr):
    """One program per row: y = x * rstd * w, and rstd saved for the backward."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * D + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd(X, W, DY, RSTD, DX, DW_PARTIAL, M, D, rows_per_program, BLOCK_D: tl.constexpr):
    """Program p handles rows [p * rows_per_program, ...): dx for each, and its partial sum of dw."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid * rows_per_program
    end = tl.minimum(start + rows_per_program, M)
    offset = start.to(tl.int64) * D  # of row `start`; advanced by D per row (64-bit: no overflow past 2^31)
    for r in range(start, end):
        x = tl.load(X + offset + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offset + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + r)
        xhat = x * rstd
        g = dy * w
        dx = rstd * (g - xhat * (tl.sum(g * xhat, axis=0) / D))
        tl.store(DX + offset + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        offset += D
    tl.store(DW_PARTIAL + pid * D + cols, dw, mask=mask)


def _block(d: int) -> int:
    block = triton.next_power_of_2(d)
    if block > 65536:
        raise ValueError(f"rms_norm: D={d} is above the one-block-per-row limit of 65536")
    return block


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        shape, d = x.shape, x.shape[-1]
        if weight.shape != (d,):
            raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} != ({d},)")
        x2 = x.reshape(-1, d).contiguous()
        w = weight.contiguous()
        m = x2.shape[0]
        y = torch.empty((m, d), device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
        rstd = torch.empty(m, device=x.device, dtype=torch.float32)
        if m:
            _rms_norm_fwd[(m,)](x2, w, y, rstd, d, eps, BLOCK_D=_block(d))
        ctx.save_for_backward(x2, w, rstd)
        ctx.shape, ctx.weight_dtype = shape, weight.dtype
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, w, rstd = ctx.saved_tensors
        m, d = x2.shape
        dy2 = dy.reshape(m, d).contiguous()
        dx = torch.empty_like(x2)
        programs = max(1, min(m, 4 * _sm_count(x2.device)))
        rows_per_program = triton.cdiv(m, programs) if m else 0
        dw_partial = torch.zeros((programs, d), device=x2.device, dtype=torch.float32)
        if m:
            _rms_norm_bwd[(programs,)](x2, w, dy2, rstd, dx, dw_partial, m, d, rows_per_program,
                                       BLOCK_D=_block(d))
        dw = dw_partial.sum(0).to(ctx.weight_dtype)
        return dx.view(ctx.shape), dw, None


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors on a GPU (how many programs keep it busy); a small constant elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim of x [..., D] with gain weight [D]; differentiable in x and weight."""
    return _RMSNorm.apply(x, weight, eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The same in eager PyTorch, computed in fp32 and rounded once to the output dtype."""
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(out_dtype)
