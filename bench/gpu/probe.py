"""Part a of the GPU run: what the machine is, and the bf16 matmul rate that MFU is read against.

MFU in this project divides by the datasheet's dense bf16 peak (tasks/train/backends/devices.py:
PEAK_FLOPS); this also measures what a large bf16 matrix product reaches here, so a reader can see both
ceilings. On CPU (the smoke) it measures a small matmul and says there is no GPU.

    python bench/gpu/probe.py --out probe.json [--smoke]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatpipe.tasks.train.backends.devices import DEVICES


def nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def matmul_tflops(n: int, device: str, reps: int) -> float:
    """Dense bf16 n×n×n products: the mean rate of `reps` timed ones after three warm-ups."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_cores": __import__("os").cpu_count(), "gpu": None}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if cuda:
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                       "multiprocessors": p.multi_processor_count, "capability": f"{p.major}.{p.minor}",
                       "nvidia_smi": nvidia_smi()}
        info["datasheet_bf16_tflops"] = (DEVICES["cuda"].peak_flops() or 0) / 1e12 or None
    n, reps = (512, 3) if args.smoke or not cuda else (8192, 20)
    info["matmul"] = {"n": n, "reps": reps, "device": "cuda" if cuda else "cpu",
                      "bf16_tflops": round(matmul_tflops(n, "cuda" if cuda else "cpu", reps), 2)}
    args.out.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
