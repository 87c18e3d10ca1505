"""Where training runs: a small registry of devices, and `auto`, which takes the first one available.

Each entry says whether it is available here, how to get a `torch.device`, which autocast dtype it uses
and (for MFU) the peak dense bf16 FLOP/s of known parts. A later backend is one more entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from tasks.errors import ConfigError

# Peak dense bf16 tensor-core FLOP/s, from the vendors' data sheets (SXM parts).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass(frozen=True)
class Device:
    name: str
    available: Callable[[], bool]
    autocast: torch.dtype | None  # mixed precision on this device, or None for fp32

    def torch_device(self, local_rank: int = 0) -> torch.device:
        return torch.device(f"cuda:{local_rank}") if self.name == "cuda" else torch.device(self.name)

    def peak_flops(self, local_rank: int = 0) -> float | None:
        if self.name != "cuda":
            return None
        gpu = torch.cuda.get_device_name(local_rank)
        return next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)


DEVICES = {
    "cuda": Device("cuda", torch.cuda.is_available, torch.bfloat16),
    "cpu": Device("cpu", lambda: True, None),
}
AUTO_ORDER = ("cuda", "cpu")


def pick(requested: str) -> tuple[Device, str]:
    """The device to train on and why it was chosen."""
    if requested == "auto":
        for name in AUTO_ORDER:
            if DEVICES[name].available():
                skipped = [n for n in AUTO_ORDER[:AUTO_ORDER.index(name)]]
                return DEVICES[name], f"auto: {name}" + (f" ({', '.join(skipped)} not available)" if skipped else "")
    device = DEVICES[requested]
    if not device.available():
        raise ConfigError(f"params: train.device: {requested} is not available on this machine")
    return device, f"{requested} (requested)"
