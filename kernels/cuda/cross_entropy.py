"""Linear + cross-entropy (the LM head and the loss) without the whole batch's logits in memory.

Why: the model computes `logits = lm_head(h).float()` for every token, then `F.cross_entropy`. For N
tokens and a vocab of V that is an N x V fp32 tensor, kept for the backward along with its softmax: at
N = 16k tokens and V = 32k, 2 GiB each, often the largest activation of a small model. Here the rows
are processed `chunk` at a time: the forward computes a chunk's logits (a torch matmul), a Triton kernel
reduces each row to its log-sum-exp and loss with an online (running max) log-sum-exp over vocab blocks,
and the logits are dropped; only h, the weight, the targets and one fp32 log-sum-exp per row are saved.
The backward recomputes each chunk's logits, a second kernel turns them in place into
dlogits = (softmax - onehot(target)) * grad / n_valid, and two matmuls give the chunk's dh rows and its
contribution to dW (summed in fp32). Peak extra memory is one chunk of logits, not N of them.

`linear_cross_entropy(h, weight, targets, chunk)` equals
`F.cross_entropy((h @ weight.T).float(), targets, ignore_index=-1)` (mean over the targets that are not
-1) and its gradients for h and weight; `linear_cross_entropy_reference` is that expression.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

IGNORE_INDEX = -1
_IGNORE: tl.constexpr = tl.constexpr(IGNORE_INDEX)  # the same, as kernels can see it


@triton.jit
def _ce_fwd(LOGITS, stride, TARGETS, LOSS, LSE, V, BLOCK_V: tl.constexpr):
    """One program per row: lse = logsumexp(logits) by an online max over vocab blocks; loss = lse - logit[target]."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    cols = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # running max, per lane
    s = tl.zeros([BLOCK_V], dtype=tl.float32)          # running sum of exp(x - m), per lane
    for start in range(0, V, BLOCK_V):
        x = tl.load(base + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # lanes still at -inf (only masked columns so far) add nothing; avoid exp(-inf - -inf) = nan
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - safe) + tl.exp(x - safe)
        m = m_new
    m_row = tl.max(m, axis=0)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), axis=0))
    target = tl.load(TARGETS + row)
    valid = target != _IGNORE
    x_t = tl.load(base + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(LSE + row, lse)
    tl.store(LOSS + row, tl.where(valid, lse - x_t, 0.0))


@triton.jit
def _ce_bwd(LOGITS, stride, TARGETS, LSE, SCALE, V, BLOCK_V: tl.constexpr):
    """One program per row, in place: logits -> (softmax - onehot(target)) * scale; 0 for ignored rows."""
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride
    cols = tl.arange(0, BLOCK_V)
    target = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    scale = tl.where(target != _IGNORE, tl.load(SCALE), 0.0)
    for start in range(0, V, BLOCK_V):
        idx = start + cols
        mask = idx < V
        x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
        d = (tl.exp(x - lse) - tl.where(idx == target, 1.0, 0.0)) * scale
        tl.store(base + idx, d.to(LOGITS.dtype.element_ty), mask=mask)


def _block_v(v: int) -> int:
    return min(4096, triton.next_power_of_2(v))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1] or targets.shape != (h.shape[0],):
            raise ValueError(f"linear_cross_entropy: h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
                             f"targets {tuple(targets.shape)}; want [N, D], [V, D], [N]")
        if h.dtype != weight.dtype:
            raise ValueError(f"linear_cross_entropy: h is {h.dtype}, weight is {weight.dtype}")
        n, v = h.shape[0], weight.shape[0]
        targets = targets.contiguous()
        loss = torch.empty(n, device=h.device, dtype=torch.float32)
        lse = torch.empty(n, device=h.device, dtype=torch.float32)
        for i in range(0, n, chunk):
            logits = (h[i:i + chunk] @ weight.T).contiguous()  # [c, V] in h's dtype, like lm_head(h)
            _ce_fwd[(logits.shape[0],)](logits, logits.stride(0), targets[i:i + chunk], loss[i:i + chunk],
                                        lse[i:i + chunk], v, BLOCK_V=_block_v(v))
        n_valid = (targets != IGNORE_INDEX).sum()
        ctx.save_for_backward(h, weight, targets, lse, n_valid)
        ctx.chunk = chunk
        return loss.sum() / n_valid  # nan when every target is ignored, like F.cross_entropy

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, weight, targets, lse, n_valid = ctx.saved_tensors
        n, v = h.shape[0], weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[:2]
        scale = (grad.float() / n_valid).reshape(1)  # stays on the device: no host sync
        dh = torch.empty(h.shape, device=h.device, dtype=h.dtype) if need_h else None  # contiguous: out= rows
        dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        for i in range(0, n, ctx.chunk):
            hc = h[i:i + ctx.chunk]
            dlogits = (hc @ weight.T).contiguous()  # recomputed; becomes dlogits in place
            _ce_bwd[(dlogits.shape[0],)](dlogits, dlogits.stride(0), targets[i:i + ctx.chunk], lse[i:i + ctx.chunk],
                                         scale, v, BLOCK_V=_block_v(v))
            if need_h:
                torch.matmul(dlogits, weight, out=dh[i:i + ctx.chunk])
            if need_w:
                dw += (dlogits.T @ hc).float()
        return dh, (dw.to(weight.dtype) if need_w else None), None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of logits h @ weight.T [N, V] against targets [N] (-1 ignored), `chunk` rows at a time."""
    if chunk < 1:
        raise ValueError(f"linear_cross_entropy: chunk={chunk} < 1")
    return _LinearCrossEntropy.apply(h, weight, targets, chunk)


def linear_cross_entropy_reference(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same in eager PyTorch: the whole batch's fp32 logits, then F.cross_entropy (as model/transformer.py)."""
    return F.cross_entropy((h @ weight.T).float(), targets, ignore_index=IGNORE_INDEX)
