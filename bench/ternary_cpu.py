"""Which CPU matmul a served ternary linear should run: the measurement behind kernels/ternary_cpu.py.

A ternary linear at decode time multiplies M = 1..8 token rows of int8 activation codes by an [N, K] weight of
codes in {-1, 0, +1}. Candidates, each timed alone (the matmul) and as the whole linear (quantize the float input
per token, matmul, apply the two scales), at the block shapes of the demo model (4L x 128) and nano-125m (768):

    fp32 float       x @ W.T in fp32, weights in fp32 (what the float teacher runs; 4 bytes a weight)
    int_mm           torch._int_mm(int8 codes, int8 W as [K, N] contiguous) -> int32
    int_mm_t         torch._int_mm(int8 codes, int8 W stored [N, K], passed transposed) -> int32
    int8pack         torch._weight_int8pack_mm(codes as fp32, int8 W [N, K], per-row scales) -> fp32 (exact sums)
    bf16             codes as bf16 @ W codes in bf16 (exact sums in fp32; 2 bytes a weight: over the memory budget)
    cast             codes as fp32 @ int8 W cast to fp32 per call
    c packed         kernels/ternary_cpu.c on the 2-bit packed W (1/16 of fp32): quantize, AVX-512 VNNI
                     integer sums, scales, in one call (its matmul is not separable: "linear" only)

Medians of interleaved repeats, torch's default threads (2 here). Prints a table and writes
bench/results/<date>-ternary-cpu-kernels.json.

    python bench/ternary_cpu.py
"""
from __future__ import annotations

import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatpipe.kernels import ternary_cpu  # noqa: E402
from chatpipe.kernels.ternary_codes import activation_codes, pack_codes, packed_rows  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"demo": [(128, 384), (128, 128), (128, 768), (384, 128)],      # (K, N): qkv, wo, gate_up, down
          "nano-125m": [(768, 2304), (768, 768), (768, 4096), (2048, 768)]}


def candidates(k: int, n: int) -> dict[str, tuple]:
    """name -> (matmul on activation codes, whole linear on float x)."""
    g = torch.Generator().manual_seed(0)
    w8 = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    w_kn = w8.t().contiguous()
    wf_t = (w8.float() * 0.02).t().contiguous()
    wb_t = w8.to(torch.bfloat16).t().contiguous()
    ones, scale = torch.ones(n), torch.full((n,), 0.02)

    def linear(mm):
        def run(x):
            codes, s = activation_codes(x)
            return mm(codes) * (scale / s)
        return run

    mms = {"int_mm": lambda c: torch._int_mm(c.to(torch.int8), w_kn),
           "int_mm_t": lambda c: torch._int_mm(c.to(torch.int8), w8.t()),
           "int8pack": lambda c: torch._weight_int8pack_mm(c, w8, ones),
           "bf16": lambda c: c.to(torch.bfloat16) @ wb_t,
           "cast": lambda c: c @ w8.t().float()}
    out = {"fp32 float": (lambda c: c @ wf_t, lambda x: x @ wf_t)}
    out.update({name: (mm, linear(mm)) for name, mm in mms.items()})
    packed = packed_rows(pack_codes(w8), (n, k))
    out["c packed"] = (None, lambda x: ternary_cpu.linear(x, packed, scale, (n, k)))
    return out


def time_it(fn, x, reps: int) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - start) / reps * 1e6


def main() -> None:
    rows = []
    for size, shapes in SHAPES.items():
        for k, n in shapes:
            cands = candidates(k, n)
            for m in (1, 2, 4, 8):
                x = torch.randn(m, k)
                codes = activation_codes(x)[0]
                reps = 2000 if size == "demo" else 40
                times: dict[str, list[float]] = {f"{c} {part}": [] for c in cands for part in ("mm", "linear")}
                for _ in range(5):
                    for c, (mm, lin) in cands.items():
                        if mm is not None:
                            times[f"{c} mm"].append(time_it(mm, codes, reps))
                        times[f"{c} linear"].append(time_it(lin, x, reps))
                row = {"size": size, "K": k, "N": n, "M": m,
                       "us": {name: round(statistics.median(t), 2) for name, t in times.items() if t}}
                rows.append(row)
                print(size, k, n, m, "  ".join(f"{name} {v:.1f}" for name, v in row["us"].items()), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{dt.date.today().isoformat()}-ternary-cpu-kernels.json"
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows},
                              indent=1) + "\n")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
