"""kernels/cross_entropy.py: the chunked linear + cross-entropy equals the full-logits loss and its gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chatpipe.kernels.cross_entropy import linear_cross_entropy
from chatpipe.model.presets import preset
from chatpipe.model.transformer import Transformer


def case(n=100, d=32, v=503, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(v, d, generator=g) * 0.2).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = -1  # a quarter ignored
    return h, w, t


def grads(loss_fn, h, w, t):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = loss_fn(h, w, t)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [7, 32, 1000])
def test_equals_the_full_logits_loss_in_fp32(chunk):
    h, w, t = case()
    ref = grads(lambda h, w, t: F.cross_entropy((h @ w.T).float(), t, ignore_index=-1), h, w, t)
    ours = grads(lambda h, w, t: linear_cross_entropy(h, w, t, chunk), h, w, t)
    for a, b, tol in zip(ours, ref, (1e-6, 1e-7, 1e-7)):
        assert a.dtype == b.dtype and torch.allclose(a, b, atol=tol, rtol=1e-5), (a - b).abs().max()


def test_under_bf16_autocast_it_matches_lm_head_in_bf16():
    """Autocast computes lm_head(h) in bf16; so do we (cast once), with the softmax in fp32."""
    h, w, t = case()

    def autocast(fn):
        def run(h, w, t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(h, w, t)
        return run
    ref = grads(autocast(lambda h, w, t: F.cross_entropy((h @ w.T).float(), t, ignore_index=-1)), h, w, t)
    ours = grads(autocast(lambda h, w, t: linear_cross_entropy(h, w, t, 32)), h, w, t)
    assert ours[1].dtype == torch.float32 and ours[2].dtype == torch.float32  # the inputs' dtypes
    assert abs(ours[0] - ref[0]) < 1e-5  # the same bf16 logits, summed in another order
    for a, b in zip(ours[1:], ref[1:]):
        assert (a - b).abs().max() <= 0.01 * b.abs().max()  # bf16 rounding of the gradient matmuls


def test_all_targets_ignored_is_nan_like_torch():
    h, w, t = case(n=8)
    t[:] = -1
    assert torch.isnan(linear_cross_entropy(h, w, t, 4)) and torch.isnan(F.cross_entropy(h @ w.T, t, ignore_index=-1))


def test_the_model_with_chunked_kernels_trains_the_same():
    torch.manual_seed(0)
    cfg = preset("chat-7m", vocab_size=300, n_layer=2, n_embd=32, n_head=4, block_size=16)
    plain, chunked = Transformer(cfg), Transformer(cfg)
    chunked.load_state_dict(plain.state_dict())
    chunked.use_kernels("chunked")
    x, y = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    (lp := plain(x, y)[1]).backward()
    logits, lc = chunked(x, y)
    lc.backward()
    assert logits is None and torch.allclose(lp, lc, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), chunked.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_the_same_one():
    """LoRA freezes the head: its gradient is not computed (a vocabulary-sized matmul per chunk saved)."""
    h, w, t = case()
    w = w.detach()  # requires_grad False, as a frozen base weight
    ref = torch.autograd.grad(F.cross_entropy((h @ w.T).float(), t, ignore_index=-1), h)[0]
    loss = linear_cross_entropy(h, w, t, 32)
    (dh,) = torch.autograd.grad(loss, h)
    assert torch.allclose(dh, ref, atol=1e-7, rtol=1e-5) and w.grad is None
