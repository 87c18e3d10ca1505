"""Triton kernels for the model's hot spots, each beside a pure-PyTorch reference it is tested against.

    rms_norm(x, weight, eps)                              fused RMSNorm, forward and backward (rmsnorm.py)
    linear_cross_entropy(h, weight, targets, chunk)       LM head + mean cross-entropy, logits a chunk at a
                                                          time, recomputed in the backward (cross_entropy.py)
    ternary_matmul(x, packed, scale, shape)               x @ W.T for a 2-bit packed ternary W, unpacked in
                                                          the kernel (ternary_matmul.py)

Written for CUDA GPUs; on CPU tensors they run under Triton's interpreter (TRITON_INTERPRET=1, set before
these modules are imported: triton.jit picks interpreter or compiler when a kernel is defined), which is
how tests/test_kernels_triton.py checks them without a GPU. Needs the `triton` package.
"""
from .cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from .rmsnorm import rms_norm, rms_norm_reference
from .ternary_matmul import ternary_matmul, ternary_matmul_reference

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference", "rms_norm", "rms_norm_reference",
           "ternary_matmul", "ternary_matmul_reference"]
