"""The 2-bit packed ternary weight format: what model/quant.py publishes and the ternary matmul kernels read.

A ternary weight is codes in {-1, 0, +1} times one fp32 scale per tensor. Packed, code c is stored as c + 1
(0, 1, 2; 3 is unused) at 2 bits, four to a byte, in the weight's row-major (flat) order:

    weight i sits at bits 2 * (i % 4) of byte i // 4        (the last byte padded with code 0, i.e. 0 bits)

so an [N, K] weight takes ceil(N * K / 4) bytes. Which codes and scale a float weight gets is the model's
business (model/quant.py `pack_ternary`: BitLinear's absmean quantizer, then `pack_codes`); this module is the
byte layout only, in pure torch, shared by the model (packing, and `unpack_ternary` when loading a packed
bundle) and by the kernels and their references (kernels/ternary_cpu.c, kernels/cuda/ternary_matmul.py).

    pack_codes(codes) -> uint8                      codes in {-1, 0, +1} (any shape, any dtype) -> packed bytes
    unpack_codes(packed, numel, dtype) -> dtype     the first numel codes, flat, as -1 / 0 / +1 (float32 by default)
    unpack_ternary(packed, scale, shape) -> float32 codes * scale in `shape`: the weight a packed tensor stands for
    packed_rows(packed, shape) -> uint8 [N, K / 4]  the bytes of an [N, K] weight, a row per output (K % 4 == 0)

The activations a ternary weight multiplies are int8 codes too, one scale per token (BitNet b1.58's absmax):

    activation_codes(x) -> (codes, scale)           x ~= codes / scale; codes integers in [-127, 127] in x's dtype
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-5  # the floor of a weight's absmean and of a token's absmax (model/quant.py)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes in {-1, 0, +1} (any shape; float or integer) -> uint8 tensor of ceil(numel / 4) bytes, 4 codes a byte."""
    flat = (codes.flatten() + 1).to(torch.uint8)
    flat = F.pad(flat, (0, -flat.numel() % 4)).view(-1, 4)
    return flat[:, 0] | flat[:, 1] << 2 | flat[:, 2] << 4 | flat[:, 3] << 6


def unpack_codes(packed: torch.Tensor, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of pack_codes: the first `numel` codes as a flat tensor of -1, 0 and +1 (float32, or e.g. int8)."""
    codes = torch.stack([packed >> s & 3 for s in (0, 2, 4, 6)], dim=1).flatten()[:numel]
    return codes.to(dtype) - 1


def unpack_ternary(packed: torch.Tensor, scale: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 weight packed codes stand for: codes * scale, in `shape` (model/quant.py's pack_ternary inverted:
    equal to BitLinear's quantized weight)."""
    return unpack_codes(packed, math.prod(shape)).view(shape) * torch.tensor(scale, dtype=torch.float32)


def packed_rows(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The packed codes of an [N, K] weight as [N, K / 4] bytes: row n is output n's codes (needs K % 4 == 0,
    so that every row starts on a byte; the ternary kernels read rows, and fused linears are rows concatenated)."""
    n, k = shape
    if k % 4:
        raise ValueError(f"packed rows of whole bytes need in_features % 4 == 0; got {tuple(shape)}")
    return packed.view(n, k // 4)


def activation_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 codes: (codes, scale) with x ~= codes / scale; codes are integers in [-127, 127]
    held in x's dtype, scale is [..., 1]: each row of the last dim scaled so its max |x| maps to 127, rounded
    (half to even). BitLinear's forward (model/quant.py) and the ternary kernels quantize exactly so.

    No clamp: |x * scale| <= 127 up to one float rounding, which cannot round past 127 (and a row whose max is
    below EPS has |x * scale| < 127)."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * scale).round(), scale
