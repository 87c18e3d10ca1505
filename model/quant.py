"""Ternary (BitNet b1.58) linear layers, and packing a ternary model at 2 bits per weight.

This exists so the pipeline can train small students whose block weights are in {-1, 0, +1} times one
scale per tensor: about 16x smaller than fp32 once packed, and matmuls that are additions at inference.
Training is quantization-aware: `BitLinear` keeps float latent weights (they are what the optimizer
updates) and quantizes them, and its input activations, on every forward; the straight-through estimator
passes gradients past the rounding as if it were the identity. Parameter names match `nn.Linear`, so a
float checkpoint loads into a ternary model and QAT can start from it.

    BitLinear                       nn.Linear with absmean-ternary weights and per-token absmax int8 inputs
    ternary_codes, ternary_weight   absmean weight quantizer: (codes, scale), and codes * scale
    quantize_activations            per-token absmax int8 activation quantizer (forward values, no STE); its
                                    codes and scale are kernels/ternary_codes.py's `activation_codes`
    pack_ternary                    one weight tensor -> (uint8 codes, 4 per byte; scale; shape)
    packed_state_dict               a whole model, BitLinear weights packed, everything else as is
    split_packed                    one linear's packed entries out of such a state dict

The packed byte layout, its inverse `unpack_ternary`, and the activations' int8 codes live in
kernels/ternary_codes.py: the ternary kernels read the same bytes and quantize the same way, and kernels/
imports nothing from model/.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from chatpipe.kernels.ternary_codes import EPS, activation_codes, pack_codes

_SUFFIXES = ("weight", "weight_scale", "weight_shape")  # the three entries a packed weight becomes


def ternary_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmean quantization: (codes in {-1, 0, 1} as w's dtype, scale = mean(|w|) + EPS as a 0-d tensor)."""
    scale = w.abs().mean() + EPS
    return (w / scale).round().clamp(-1, 1), scale


def ternary_weight(w: torch.Tensor) -> torch.Tensor:
    """The value BitLinear multiplies by: codes * scale, three distinct values per tensor."""
    codes, scale = ternary_codes(w)
    return codes * scale


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 (activation_codes), scaled back: the value BitLinear multiplies by."""
    codes, scale = activation_codes(x)
    return codes / scale


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward value q, gradient of the identity w.r.t. x (straight-through estimator)."""
    return x + (q - x).detach()


class BitLinear(nn.Linear):
    """BitNet b1.58 linear layer (no bias): ternary weights, int8 per-token activations, float latents.

    No extra normalization before the activation quantizer. The paper puts a parameter-free LayerNorm
    there; here it is left out because (1) per-token absmax quantization is invariant to each token's
    scale, so the quantization error relative to the signal does not depend on how large the token is;
    (2) the pre-norm blocks already RMS-normalize the inputs of wq/wk/wv and w1/w3; and (3) without it a
    float checkpoint loaded into a ternary model computes the same function up to quantization noise, so
    QAT from a float model starts where the float model was (an inserted norm would change wo and w2's
    inputs by a per-token factor the float weights were not trained for).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None):
        if bias:
            raise ValueError("BitLinear: bias is not supported (BitNet has none)")
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _ste(self.weight, ternary_weight(self.weight))
        return F.linear(_ste(x, quantize_activations(x)), w)

    def packed(self) -> tuple[torch.Tensor, float, tuple[int, ...]]:
        """The weight as a bundle stores it (pack_ternary); model/ternary_linear.py's TernaryLinear has the same."""
        return pack_ternary(self.weight)


def pack_ternary(w: torch.Tensor) -> tuple[torch.Tensor, float, tuple[int, ...]]:
    """Quantize w as BitLinear does and pack it: codes 0, 1, 2 (for -1, 0, +1) at 2 bits, 4 to a byte.

    Returns (uint8 tensor of ceil(numel / 4) bytes, scale, shape); weight i sits at bits 2*(i % 4) of byte i // 4
    (the layout is kernels/ternary_codes.py's; its `unpack_ternary` is the inverse).
    """
    codes, scale = ternary_codes(w.detach())
    return pack_codes(codes), scale.item(), tuple(w.shape)


def _bitlinears(model: nn.Module) -> dict[str, BitLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


def packed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() with each ternary linear's weight `<name>.weight` as its packed uint8 codes, plus
    `<name>.weight_scale` (0-d float32) and `<name>.weight_shape` (int64). Ternary linears: BitLinears, and
    a served model's TernaryLinears (any module with `packed()`), so a loaded bundle writes the same weights."""
    state = model.state_dict()
    for name, m in model.named_modules():
        if not hasattr(m, "packed"):
            continue
        packed, scale, shape = m.packed()
        state.pop(f"{name}.weight", None)
        state.update(dict(zip((f"{name}.{s}" for s in _SUFFIXES),
                              (packed, torch.tensor(scale, dtype=torch.float32), torch.tensor(shape)))))
    return state


def split_packed(state: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, float, tuple[int, ...]]:
    """Take linear `name`'s three packed entries out of a packed_state_dict: (codes, scale, shape)."""
    packed, scale, shape = (state.pop(f"{name}.{s}") for s in _SUFFIXES)
    return packed, scale.item(), tuple(shape.tolist())
