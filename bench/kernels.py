"""Benchmark: our Triton kernels (kernels/cuda/) against PyTorch eager and `torch.compile` of their references.

Each case runs the same inputs through ours, the eager reference (the function beside each kernel, or the
op the model uses today) and `torch.compile` of that reference; outputs are checked to agree first (max
abs error recorded). Then each is timed with CUDA events: `--warmup` runs, then `--reps` runs, median
milliseconds, and the ratio peer / ours (above 1: ours is faster). Cases, bf16 unless noted:

- linear_cross_entropy, forward+backward, h [N, D], weight [V, D]: against F.cross_entropy of the full fp32
  logits (the model's head and loss), eager and compiled; also the peak extra memory of each.
- ternary_matmul, x [M, K] @ packed [N, K]: against the reference (unpack the weight, then matmul), eager
  and compiled, and a dense bf16 matmul with the weight unpacked once beforehand (the speed to beat).

Needs a CUDA GPU: without one it says so and exits; it never reports CPU or interpreter numbers.

    python bench/kernels.py                 # all cases → bench/results/<date>-kernels-<gpu>.json
    python bench/kernels.py --quick         # smaller shapes, fewer reps
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEVICE = "cuda"
SHAPES = {  # cross_entropy: (N, D, V); ternary: (N, K, [M, ...])
    "full": {"cross_entropy": [(8192, 1024, 32768), (16384, 2048, 50304), (8192, 4096, 128256)],
             "ternary": (4096, 4096, [1, 8, 64, 512, 4096])},
    "quick": {"cross_entropy": [(4096, 512, 32768)], "ternary": (2048, 2048, [1, 16, 256])},
}


def timed(fn, warmup: int, reps: int) -> float:
    """Median milliseconds of fn() over reps CUDA-event-timed runs, after warmup runs."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_mib(fn) -> float:
    """Peak memory fn() allocates beyond what was live before it, MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def fwd_bwd(fn, inputs: list[torch.Tensor], grad: torch.Tensor | None = None):
    """A closure running fn(*inputs) and its backward (grads of the inputs that require them, then dropped)."""
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        out = fn(*inputs)
        torch.autograd.grad(out, leaves, grad)
    return run


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def compare(label: str, shape: dict, ours, peers: dict, errors: dict, args, extra: dict | None = None) -> dict:
    """Time ours and each peer (closures of no arguments), print one line, return the result row."""
    ms = {"ours": timed(ours, args.warmup, args.reps)}
    ms.update({name: timed(peer, args.warmup, args.reps) for name, peer in peers.items()})
    row = {"case": label, **shape, "ms": ms, "ratio_vs_ours": {k: v / ms["ours"] for k, v in ms.items() if k != "ours"},
           "max_abs_err": errors, **(extra or {})}
    dims = " ".join(f"{k}={v}" for k, v in shape.items() if k != "dtype")
    print(f"{label:<30} {dims:<24} ours {ms['ours']:.3f} ms | "
          + " | ".join(f"{k} {v:.3f} ms ({v / ms['ours']:.2f}x)" for k, v in ms.items() if k != "ours"))
    return row


def cross_entropy_cases(k, args) -> list[dict]:
    shapes = SHAPES["quick" if args.quick else "full"]["cross_entropy"]
    return [cross_entropy_case(k, args, n, d, v) for n, d, v in shapes]


def cross_entropy_case(k, args, n: int, d: int, v: int) -> dict:
    h = (torch.randn(n, d, device=DEVICE) / d ** 0.5).to(torch.bfloat16).requires_grad_()
    w = (0.02 * torch.randn(v, d, device=DEVICE)).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, v, (n,), device=DEVICE)
    t[::17] = -1
    ours = lambda h, w: k.linear_cross_entropy(h, w, t, chunk=args.chunk)
    ref = lambda h, w: k.linear_cross_entropy_reference(h, w, t)
    peers = {"eager": ref, "compiled": torch.compile(ref)}
    loss = ours(h, w)
    dh, dw = torch.autograd.grad(loss, (h, w))
    errors = {}
    for name, f in peers.items():
        ref_loss = f(h, w)
        rdh, rdw = torch.autograd.grad(ref_loss, (h, w))
        errors[name] = {"loss": max_err(loss, ref_loss), "dh": max_err(dh, rdh), "dw": max_err(dw, rdw)}
    del loss, dh, dw, ref_loss, rdh, rdw
    memory = {"ours": peak_mib(fwd_bwd(ours, [h, w]))}
    memory.update({name: peak_mib(fwd_bwd(f, [h, w])) for name, f in peers.items()})
    row = compare("linear_cross_entropy fwd+bwd", {"N": n, "D": d, "V": v, "dtype": "bf16"},
                  fwd_bwd(ours, [h, w]), {name: fwd_bwd(f, [h, w]) for name, f in peers.items()},
                  errors, args, extra={"chunk": args.chunk, "peak_extra_mib": memory})
    print(f"{'':<30} peak extra memory: " + ", ".join(f"{k_} {m:.0f} MiB" for k_, m in memory.items()))
    return row


def ternary_cases(k, args) -> list[dict]:
    from chatpipe.kernels.ternary_codes import unpack_ternary
    from chatpipe.model.quant import pack_ternary

    n, kk, ms = SHAPES["quick" if args.quick else "full"]["ternary"]
    packed, scale, shape = pack_ternary(torch.randn(n, kk))
    dense = unpack_ternary(packed, scale, shape).to(DEVICE, torch.bfloat16)
    packed = packed.to(DEVICE)
    ref = lambda x: k.ternary_matmul_reference(x, packed, scale, shape)
    peers = {"eager reference (unpack + matmul)": ref, "compiled reference": torch.compile(ref),
             "dense bf16 matmul (pre-unpacked)": lambda x: x @ dense.T}
    extra = {"weight_bytes": {"packed": packed.numel(), "dense_bf16": dense.numel() * 2}}
    return [ternary_case(k, args, torch.randn(m, kk, device=DEVICE, dtype=torch.bfloat16), packed, scale, shape,
                         peers, extra) for m in ms]


def ternary_case(k, args, x, packed, scale, shape, peers, extra) -> dict:
    y = k.ternary_matmul(x, packed, scale, shape)
    errors = {name: max_err(y, f(x)) for name, f in peers.items()}
    return compare("ternary_matmul", {"M": x.shape[0], "N": shape[0], "K": shape[1], "dtype": "bf16"},
                   lambda: k.ternary_matmul(x, packed, scale, shape),
                   {name: (lambda f=f: f(x)) for name, f in peers.items()}, errors, args, extra=extra)


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=1024, help="linear_cross_entropy rows per chunk")
    ap.add_argument("--only", choices=["cross_entropy", "ternary"], default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py: GPU rows need a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
    try:
        import triton
    except ImportError:
        sys.exit("bench/kernels.py: needs the cuda extra (triton): pip install 'chat-pipeline[cuda]'")
    import chatpipe.kernels.cuda as k
    torch.manual_seed(0)
    groups = {"cross_entropy": cross_entropy_cases, "ternary": ternary_cases}
    rows = []
    for name, cases in groups.items():
        if args.only in (None, name):
            rows += cases(k, args)
    gpu = torch.cuda.get_device_name()
    result = {"benchmark": "kernels", "date": dt.date.today().isoformat(), "gpu": gpu,
              "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
              "machine": platform.machine(), "warmup": args.warmup, "reps": args.reps, "quick": args.quick,
              "timing": "median ms of CUDA-event-timed runs; ratio_vs_ours = peer ms / our ms (> 1: ours faster)",
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['date']}-kernels-{gpu_slug(gpu)}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"→ {path}")


if __name__ == "__main__":
    main()
