"""Ternary linears on integer codes, by device type: which kernel a served ternary linear runs.

A served ternary linear (model/ternary_linear.py) holds its weight's codes in {-1, 0, +1} in the form its
device's kernel reads and one scale per output, and computes what BitLinear's forward does: the input's
per-token int8 codes (kernels/ternary_codes.py `activation_codes`) times the weight codes, summed exactly as
integers, times the weight's scale over the token's. One entry per device type, imported when a linear is
first built on that device (so a CPU process never imports triton):

    store(packed, shape) -> weight                  the bundle's 2-bit packed codes of an [N, K] weight
                                                    (kernels/ternary_codes.py) -> what the kernel reads: one
                                                    row per output, so fused linears are rows concatenated
    linear(x, weight, scale, shape) -> [M, N] fp32  x [M, K] float32; scale [N] float32

    cpu    kernels/ternary_cpu.py: a C kernel on the packed bytes (AVX-512 VNNI), or torch._int_mm on int8
           codes where no C compiler is found
    cuda   kernels/cuda/ternary_matmul.py: the Triton kernel on the packed bytes, the activation codes as
           fp32 (integers below 2^24 add exactly in fp32, so its sums are the integer ones)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ternary_codes import activation_codes, packed_rows


@dataclass(frozen=True)
class TernaryKernel:
    store: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
    linear: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def _cpu() -> TernaryKernel:
    from .ternary_cpu import functions

    return TernaryKernel(*functions())


def _cuda() -> TernaryKernel:
    from .cuda import ternary_matmul  # triton: the cuda extra (kernels/cuda says so in one line without it)

    def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        codes, s = activation_codes(x)
        return ternary_matmul(codes, weight.view(-1), 1.0, shape) * (scale / s)

    return TernaryKernel(packed_rows, linear)


KERNELS: dict[str, Callable[[], TernaryKernel]] = {"cpu": _cpu, "cuda": _cuda}


def kernel_for(device: torch.device | str) -> TernaryKernel:
    """The ternary kernel of `device`'s type."""
    kind = torch.device(device).type
    if kind not in KERNELS:
        raise ValueError(f"no ternary kernel for {kind} devices; there are: {', '.join(KERNELS)}")
    return KERNELS[kind]()
