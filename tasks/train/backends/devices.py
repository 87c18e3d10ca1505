"""Where training runs: a small registry of devices, and `auto`, which takes the first one available.

Each entry says whether it is usable here (and if not, why), how to get a `torch.device`, whether it
computes bf16 natively (then `train.precision: auto` trains in bf16 autocast there), whether its optimizer
step runs outside torch (`offload`: the factory of that step, tasks/train/backends/offload.py; None for CPU and
CUDA, where the trainer's torch step does it, tasks/train/step.py) and (for MFU) the peak dense bf16 FLOP/s of
known parts. `auto` takes cuda, then vulkan, then cpu, and says what
it passed over and why (a software Vulkan renderer such as lavapipe is passed over: it works, but slower
than the CPU path). A later backend is one more entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from chatpipe.tasks.common.errors import ConfigError

if TYPE_CHECKING:
    from chatpipe.tasks.train.backends.offload import Step, StepContext

# Peak dense bf16 tensor-core FLOP/s, from the vendors' data sheets (SXM parts).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass(frozen=True)
class Device:
    name: str
    status: Callable[[], str | None]  # None: usable here; else why not ("no CUDA GPU", ...)
    bf16: Callable[[], str | None]    # what makes bf16 native here ("AVX-512 BF16"), None: not (fp32 is faster)
    # builds the optimizer step where it runs outside torch autograd (Vulkan); None: the loop does it in torch
    offload: Callable[[StepContext], Step] | None = None
    tensors: str | None = None        # where the model's torch tensors live (None: on the device itself)
    auto: Callable[[], str | None] = lambda: None  # why `auto` passes it over though it works (None: it doesn't)

    def available(self) -> bool:
        return self.status() is None

    def torch_device(self, local_rank: int = 0) -> torch.device:
        return torch.device(f"cuda:{local_rank}") if self.name == "cuda" else torch.device(self.tensors or self.name)

    def peak_flops(self, local_rank: int = 0) -> float | None:
        if self.name != "cuda":
            return None
        gpu = torch.cuda.get_device_name(local_rank)
        return next((v for k, v in PEAK_FLOPS.items() if k in gpu), None)


def _vulkan_status() -> str | None:
    from chatpipe.tasks.train.backends import vulkan as vulkan_step

    if not vulkan_step.installed():
        return "IREE is not installed (the vulkan extra: pip install 'chat-pipeline[vulkan]')"
    return None if vulkan_step.available() else "no Vulkan device"


def _vulkan_auto() -> str | None:
    """A software renderer (Mesa's lavapipe) runs everything, but far slower than the CPU path itself."""
    from chatpipe.tasks.train.backends import vulkan as vulkan_step

    name = vulkan_step.device_name()
    return f"only a software renderer ({name})" if "llvmpipe" in name or "SwiftShader" in name else None


def _cpu_bf16() -> str | None:
    """The instructions that make bf16 matmuls fast on this CPU (oneDNN uses them), or None."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    return "AVX-512 BF16" if torch.cpu._is_avx512_bf16_supported() else None


def _vulkan_step(context: StepContext) -> Step:
    """One IREE-compiled step with weights and AdamW state on the GPU (tasks/train/backends/vulkan.py)."""
    from chatpipe.tasks.train.backends import vulkan as vulkan_step

    return vulkan_step.VulkanStep(context)


DEVICES = {
    "cuda": Device("cuda", lambda: None if torch.cuda.is_available() else "no CUDA GPU",
                   lambda: "CUDA" if torch.cuda.is_bf16_supported() else None),
    "vulkan": Device("vulkan", _vulkan_status, lambda: None, offload=_vulkan_step, tensors="cpu", auto=_vulkan_auto),
    "cpu": Device("cpu", lambda: None, _cpu_bf16),
}
AUTO_ORDER = ("cuda", "vulkan", "cpu")


def pick(requested: str) -> tuple[Device, str]:
    """The device to train on and why it was chosen (`auto`: the first usable of AUTO_ORDER)."""
    if requested == "auto":
        passed = []
        for name in AUTO_ORDER:
            device = DEVICES[name]
            if (why := device.status() or device.auto()) is None:
                return device, f"auto: {name}" + (f" ({'; '.join(passed)})" if passed else "")
            passed.append(f"{name}: {why}")
    device = DEVICES[requested]
    if why := device.status():
        raise ConfigError(f"params: train.device: {requested} is not available on this machine ({why})")
    return device, f"{requested} (requested)"


def precision(device: Device, requested: str) -> tuple[torch.dtype | None, str]:
    """The autocast dtype to train in (None: fp32) and why: `auto` takes bf16 where the device computes it
    natively. Weights and optimizer state stay fp32 either way (Vulkan's compiled step is fp32 only: bf16 there
    is refused with the other combinations, tasks/common/config.py: TRAIN_RULES)."""
    native = device.bf16()
    if requested == "bf16" or (requested == "auto" and native):
        return torch.bfloat16, f"bf16 autocast ({native or 'requested; not native here, slower than fp32'})"
    return None, "fp32" + (" (requested)" if requested == "fp32" else f" (no native bf16 on {device.name})")
