"""Triton kernels for the model's hot spots, each beside a pure-PyTorch reference it is tested against.

    linear_cross_entropy(h, weight, targets, chunk)       LM head + mean cross-entropy, logits a chunk at a
                                                          time, recomputed in the backward (cross_entropy.py)
    ternary_matmul(x, packed, scale, shape)               x @ W.T for a 2-bit packed ternary W, unpacked in
                                                          the kernel (ternary_matmul.py)

Runtime use: linear_cross_entropy, when the model trains on CUDA with `train.kernels: triton`
(model/transformer.py `use_kernels`); ternary_matmul, when a ternary model is served on CUDA (every block
linear, on the bundle's packed codes: kernels/ternary_matmul.py's cuda entry).

Written for CUDA GPUs; on CPU tensors they run under Triton's interpreter (TRITON_INTERPRET=1, set before
these modules are imported: triton.jit picks interpreter or compiler when a kernel is defined), which is
how tests/kernels/test_kernels_triton.py checks them without a GPU. Needs the `triton` package: the cuda extra
(pip install 'chat-pipeline[cuda]'); without it importing this package fails with one line saying so.
"""
try:
    import triton  # noqa: F401 -- the cuda extra; checked here so a missing one is one clear line
except ModuleNotFoundError as e:
    if e.name != "triton":
        raise
    raise ModuleNotFoundError("the Triton kernels (kernels/cuda) need the cuda extra: "
                              "pip install 'chat-pipeline[cuda]'", name="triton") from None

from .cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from .ternary_matmul import ternary_matmul, ternary_matmul_reference

__all__ = ["linear_cross_entropy", "linear_cross_entropy_reference", "ternary_matmul", "ternary_matmul_reference"]
