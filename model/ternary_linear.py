"""Ternary linears for inference: int8 activation codes times ternary weight codes, summed as integers.

Why: a BitLinear (model/quant.py) trains on float latent weights and runs a float matmul of quantized values.
A served ternary model needs neither: `TernaryLinear` keeps only the weight's codes in {-1, 0, +1}, in the
form its device's kernel reads (kernels/ternary_matmul.py), and its scale, and computes what BitLinear's
forward does, up to float rounding (far inside the tests' 1e-4 on logits):

    codes, s = activation_codes(x)          per-token absmax int8, exactly as BitLinear quantizes its input
    sums = codes @ W_codes.T                exact integer sums
    y = sums * (weight_scale / s)           the two scales, once per output

    TernaryLinear.from_packed(...)          a linear from the bundle's packed codes, scale and shape
    TernaryLinear.from_bitlinear(m)         a QAT layer's current ternary weight (its latents stay with it)
    TernaryLinear.fuse(*linears)            one linear computing theirs side by side (q/k/v, gate/up); the
                                            originals become row views of its codes, so nothing is held twice
    load_ternary(model, state)              a packed state dict into a ternary Transformer, no float copy of
                                            a block weight
    held_bytes(*modules)                    bytes of the linear weights held (codes and scales), each storage once
"""
from __future__ import annotations

import torch
from torch import nn

from chatpipe.kernels.ternary_codes import pack_codes
from chatpipe.kernels.ternary_matmul import kernel_for

from .quant import BitLinear, pack_ternary, split_packed


class TernaryLinear(nn.Module):
    """y = x @ W.T for a ternary W = codes * scale, computed on integer codes (no bias; inference only).

    `weight_codes` holds the codes as the device's kernel reads them (one row per output); `weight_scale` one
    float32 scale per output (a linear's own, repeated; a fused linear's, each its linear's). Both are
    non-persistent buffers: the state dict of a model of TernaryLinears holds its float tensors only (the
    codes' format is the bundle's, packed). Built on its device; moving it to another device type is not
    supported (the kernels may read different formats).
    """

    def __init__(self, weight_codes: torch.Tensor, weight_scale: torch.Tensor, shape: tuple[int, int]):
        super().__init__()
        self.out_features, self.in_features = shape
        self.kernel = kernel_for(weight_codes.device)
        self.register_buffer("weight_codes", weight_codes, persistent=False)
        self.register_buffer("weight_scale", weight_scale, persistent=False)

    @classmethod
    def from_packed(cls, packed: torch.Tensor, scale: float, shape: tuple[int, int]) -> TernaryLinear:
        """From 2-bit packed codes (kernels/ternary_codes.py) and the weight's scale, on packed's device."""
        shape = (int(shape[0]), int(shape[1]))
        scales = torch.full((shape[0],), scale, dtype=torch.float32, device=packed.device)
        return cls(kernel_for(packed.device).store(packed, shape), scales, shape)

    @classmethod
    def from_bitlinear(cls, m: BitLinear) -> TernaryLinear:
        """The ternary weight a QAT layer's forward uses now (its latent weight is left as it is)."""
        return cls.from_packed(*pack_ternary(m.weight))

    @classmethod
    def fuse(cls, *linears: TernaryLinear) -> TernaryLinear:
        """One linear whose output is the linears' outputs side by side (they share an input).

        Their codes and scales are concatenated by rows into the fused linear's, and each original is
        re-pointed at its rows of them, so nothing is held twice."""
        codes = torch.cat([m.weight_codes for m in linears])
        scales = torch.cat([m.weight_scale for m in linears])
        start = 0
        for m in linears:
            m.weight_codes, m.weight_scale = codes[start:start + m.out_features], scales[start:start + m.out_features]
            start += m.out_features
        return cls(codes, scales, (start, linears[0].in_features))

    def packed(self) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """The weight as a bundle stores it (model/quant.py pack_ternary): packed codes, scale, shape."""
        codes = self.weight_codes.cpu()
        packed = codes.reshape(-1) if codes.dtype == torch.uint8 else pack_codes(codes)  # packed rows, or int8
        return packed.clone(), self.weight_scale[0].item(), (self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kernel.linear(x.reshape(-1, self.in_features).float(), self.weight_codes, self.weight_scale,
                               (self.out_features, self.in_features))
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def rows(self) -> Rows:
        """This linear as a plain callable on [M, K] rows: what the decoder calls once per step and layer."""
        return Rows(self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, codes={self.weight_codes.dtype}"


class Rows:
    """A TernaryLinear on [M, K] rows without nn.Module's call, buffer lookups and reshapes, which at the demo
    model's size cost more than the kernel (docs/LOG.md, issue 20). Holds the linear's own tensors (no copy);
    `linear` is the module."""

    def __init__(self, linear: TernaryLinear):
        self.linear = linear
        self._fn, self._codes, self._scale = linear.kernel.linear, linear.weight_codes, linear.weight_scale
        self._shape = (linear.out_features, linear.in_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype is torch.float32:
            return self._fn(x, self._codes, self._scale, self._shape)
        return self._fn(x.float(), self._codes, self._scale, self._shape).to(x.dtype)


def load_ternary(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a packed_state_dict (model/quant.py) into a ternary model for inference: each BitLinear is replaced
    by a TernaryLinear of its packed codes (on the codes' device), the rest is loaded strictly."""
    state = dict(state)
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, TernaryLinear.from_packed(*split_packed(state, name)))
    model.load_state_dict(state)


def held_bytes(*modules: nn.Module) -> int:
    """Bytes of the linear weights the modules hold, each storage counted once: a TernaryLinear's codes and
    scales (views of one fused tensor count it once), an nn.Linear's weight."""
    storages = {}
    for module in modules:
        for m in module.modules():
            tensors = (m.weight_codes, m.weight_scale) if isinstance(m, TernaryLinear) else \
                (m.weight,) if isinstance(m, nn.Linear) else ()
            storages.update((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors)
    return sum(storages.values())
