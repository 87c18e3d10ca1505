"""Linear + cross-entropy in plain torch, a chunk of rows at a time: the CPU twin of kernels/cuda/cross_entropy.py.

Why: the model's loss is `F.cross_entropy(lm_head(h).float(), targets)`, which holds an N x V fp32 logits
tensor and its softmax for the backward: 67 MB each for the seed's batch (16 x 256 tokens, V = 4,096),
2.5 GB each for a Qwen3-size vocabulary (152k) at 4,096 tokens. Here each chunk's logits are computed,
reduced to a log-sum-exp and a loss per row, and dropped; the backward recomputes them chunk by chunk and
turns them into (softmax - onehot) * grad / n_valid in place. Peak extra memory is one chunk of logits.
It runs wherever torch does (`train.kernels: chunked`); under bf16 autocast the chunks' matmuls are bf16
like lm_head's, the softmax arithmetic fp32.

`linear_cross_entropy(h, weight, targets, chunk)` equals `F.cross_entropy((h @ weight.T).float(), targets,
ignore_index=-1)` and its gradients (tests/kernels/test_cross_entropy.py).
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -1


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's where it is on (as lm_head's would be), else h's."""
    kind = h.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Inputs cast once to the compute dtype (autocast would cast the fp32 weight again in every chunk's
    matmul); autocast is off inside, so the forward and the backward compute in the same dtype."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = _compute_dtype(h)
        with torch.autocast(h.device.type, enabled=False):
            x, w = h.to(dtype), weight.to(dtype)
            valid = targets != IGNORE_INDEX
            safe = torch.where(valid, targets, 0)
            lse = torch.empty(h.shape[0], device=h.device, dtype=torch.float32)
            picked = torch.empty_like(lse)
            for i in range(0, h.shape[0], chunk):
                logits = (x[i:i + chunk] @ w.T).float()
                lse[i:i + chunk] = torch.logsumexp(logits, dim=-1)
                picked[i:i + chunk] = logits.gather(1, safe[i:i + chunk, None]).squeeze(1)
            n_valid = valid.sum()
        ctx.save_for_backward(x, weight, safe, valid, lse, n_valid)
        ctx.chunk, ctx.h_dtype = chunk, h.dtype
        return ((lse - picked) * valid).sum() / n_valid  # nan when every target is ignored, like F.cross_entropy

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, safe, valid, lse, n_valid = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]  # a frozen head (LoRA) needs no weight gradient
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(x.dtype)
            scale = (grad.float() / n_valid) * valid  # per row: 0 for the ignored ones
            dh = torch.empty(x.shape, device=x.device, dtype=ctx.h_dtype) if need_h else None
            dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
            for i in range(0, x.shape[0], ctx.chunk):
                rows = slice(i, i + ctx.chunk)
                d = (x[rows] @ w.T).float().sub_(lse[rows, None]).exp_()                    # softmax
                d.scatter_add_(1, safe[rows, None], torch.full_like(lse[rows, None], -1.0))  # - onehot(target)
                d = d.mul_(scale[rows, None]).to(x.dtype)
                if need_h:
                    dh[rows] = d @ w
                if need_w:
                    dw += (d.T @ x[rows]).float()
        return dh, None if dw is None else dw.to(weight.dtype), None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weight.T [N, V] against targets [N] (-1 ignored), `chunk` rows at a time."""
    if chunk < 1:
        raise ValueError(f"linear_cross_entropy: chunk={chunk} < 1")
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1] or targets.shape != (h.shape[0],):
        raise ValueError(f"linear_cross_entropy: h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
                         f"targets {tuple(targets.shape)}; want [N, D], [V, D], [N]")
    return _LinearCrossEntropy.apply(h, weight, targets, chunk)
