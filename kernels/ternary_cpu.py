"""The CPU ternary linear: int8 activation codes times the 2-bit packed weight codes, summed as integers.

Why: a served ternary linear (model/ternary_linear.py) keeps its weight as the bundle stores it (2-bit codes,
1/16 of fp32), and at decode time one C call that quantizes x, multiplies and scales is about as fast as the fp32
teacher's matmul at the demo's size and several times faster at nano's, where torch._int_mm loses to the ~7
small torch ops around it. The candidates and their timings: docs/LOG.md (issue 20),
bench/results/2026-11-26-ternary-cpu-kernels.json.

- The kernel (ternary_cpu.c): per token row, x's int8 codes exactly as BitLinear quantizes them
  (kernels/ternary_codes.py `activation_codes`), int32 sums on the packed bytes (AVX-512 VNNI vpdpbusd,
  codes expanded in registers), then the two scales. Weight [N, K / 4] bytes, rows = outputs, so fused
  linears are row slices of one tensor. Single-threaded (a thread per call costs more than it saves).
- Build: `cc -O3 -march=native` once per machine into $XDG_CACHE_HOME/chat-pipeline/kernels, loaded with
  ctypes (the call releases the GIL). Plain C rather than torch.utils.cpp_extension, whose build takes tens
  of seconds on every fresh machine.
- Without a C compiler: the same linear in torch (`activation_codes`, codes unpacked to int8 at load,
  torch._int_mm, the scales), equal to the C kernel bit for bit (the tests check it).

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
