"""The CPU ternary linear: int8 activation codes times the 2-bit packed weight codes, summed as integers.

A served ternary linear (model/ternary_linear.py) on CPU keeps its weight as the bundle stores it, 2-bit
codes, 4 to a byte ([N, K / 4] bytes, rows = outputs, so fused linears are row slices of one tensor): 1/16 of
fp32. Per call, ternary_cpu.c quantizes each token row of x to int8 codes exactly as BitLinear's forward does
(kernels/ternary_codes.py `activation_codes`), sums codes times weight codes in int32 (AVX-512 VNNI
vpdpbusd on the packed bytes, expanded in registers) and applies the two scales: one call per linear.

Why this kernel (bench/ternary_cpu.py, bench/results/2026-11-26-ternary-cpu-kernels.json; this 2-core AVX-512
VNNI EPYC, torch 2.13, medians in us, M = 1 token row; "linear" = quantize x, multiply, apply the scales):

    K x N             fp32 x @ W (teacher)   _int_mm: mm / linear   _int_mm on W.T: mm / linear   this kernel
    128 x 384 (demo)          4.5                7.0 / 28.3              7.2 / 32.0                 4.9
    768 x 2304 (nano)       164.9               68.8 / 88.3             31.4 / 72.8                35.6
    768 x 4096              380.1              147.5 / 198.9            58.5 / 75.0                55.1
    2048 x 768              157.3               66.8 / 82.7             30.7 / 64.4                33.8

torch._int_mm (int8 x int8 -> int32) works on CPU in this torch for any M, K and N (no multiple-of-8 or M > 16
rule as on CUDA) and takes the int8 weight as stored, [N, K], transposed; as a bare matmul it is the fastest
at nano's shapes (oneDNN, both cores), but the per-token quantization and the scales around it are ~7 small
torch ops, 20-30 us a linear, which at the demo's size is 6x the teacher's whole matmul. The other candidates
were slower still: a float matmul on the codes cast per call (87 / 242 us), on bf16 copies of them (60 / 217
us; 2 bytes a weight), torch._weight_int8pack_mm (46 / 1,021 us). One C call does all of it in about the
teacher's time at the demo's size and 4.6-6.9x faster at nano's, reading 2 bits a weight instead of 8 (nano's
block weights packed, 21.6 MB, fit this CPU's 32 MB L3). It is single-threaded: starting a second thread per
call cost ~40 us here. At M >= 4 _int_mm's matmul alone is faster (decoding several rows at once); the
server's batches go through this kernel all the same.

The C file is compiled once per machine (`cc -O3 -march=native`: 0.5 s here) into
$XDG_CACHE_HOME/chat-pipeline/kernels and loaded with ctypes, which releases the GIL for the call. Plain C
rather than torch.utils.cpp_extension: the kernel needs nothing of torch's, and a cpp_extension build of even a
one-line function took 20.5 s here (torch's headers, ninja), which every fresh machine, test run and server
start after an upgrade would pay. Without a
C compiler the same linear runs in torch: `activation_codes`, the codes unpacked to int8 at load, torch._int_mm
(int32 sums), the scales; equal to the C kernel's output bit for bit (the tests check it).

    functions() -> (store, linear)   the C kernel's if it builds here, else the torch one's
                                     (kernels/ternary_matmul.py's cpu entry)
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from .ternary_codes import activation_codes, packed_rows, unpack_codes

SOURCE = Path(__file__).with_suffix(".c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chat-pipeline" / "kernels"


def _cpu_id() -> bytes:
    """What -march=native compiles for: the CPU's model and flags (a cached build is per machine)."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return b""
    return "\n".join(line for line in info.splitlines() if line.startswith(("model name", "flags"))).encode()


@functools.cache
def library() -> ctypes.CDLL | None:
    """ternary_cpu.c, compiled here once (cached by source, flags and CPU); None when it cannot be built."""
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((cc, *FLAGS)).encode() + _cpu_id()).hexdigest()[:16]
    path = _cache_dir() / f"ternary_cpu-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            out = Path(tmp) / path.name
            try:
                subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(out), "-lm"], check=True, capture_output=True,
                               timeout=120)
            except (OSError, subprocess.SubprocessError):
                return None
            os.replace(out, path)  # atomic: a concurrent build of the same key writes the same file
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ternary_linear.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64]
    lib.ternary_linear.restype = ctypes.c_int
    return lib


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """x [M, K] float32 @ the ternary weight [N, K].T (packed rows; scale [N] float32), through ternary_cpu.c."""
    (n, k), m = shape, x.size(0)
    x, y = x.contiguous(), torch.empty(m, n)
    if m and library().ternary_linear(x.data_ptr(), weight.data_ptr(), scale.data_ptr(), y.data_ptr(), m, n, k):
        raise MemoryError(f"ternary_linear: no memory for {m} x {k} activation codes")
    return y


def store_int8(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The torch fallback's weight: the codes as int8 [N, K] (1/4 of fp32)."""
    return unpack_codes(packed, math.prod(shape), torch.int8).view(shape)


def linear_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The same linear in torch ops: activation codes, torch._int_mm (int32 sums), the two scales."""
    codes, s = activation_codes(x)
    return torch._int_mm(codes.to(torch.int8), weight.t()) * (scale / s)


def functions() -> tuple:
    """(store, linear) of kernels/ternary_matmul.py's cpu entry: the C kernel's if it builds here, else torch's."""
    return (packed_rows, linear) if library() is not None else (store_int8, linear_int8)
