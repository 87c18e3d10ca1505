"""Where a served model comes from: a bundle directory, or a published gs:// one, on a chosen device.

`chatpipe serve` and `chatpipe chat` take `--model dist/<name>` (loaded and checksum-verified by
tasks/common/bundle.py) or `--model gs://bucket/prefix/<name>` (downloaded once into the local cache by
tasks/publish/publish.py, which checks the publish marker and the checksums, then loaded the same way).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.errors import ConfigError


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chat-pipeline" / "models"


def device(requested: str) -> torch.device:
    """`auto` (cuda if available, else cpu), `cpu`, `cuda` or `cuda:N`."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested}: not a device (auto, cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
    return chosen


def open_bundle(model: str, requested_device: str = "auto") -> bundle.Bundle:
    """The bundle named by `model` (a directory or a gs:// URI), loaded for inference."""
    if model.startswith("gs://"):
        from chatpipe.tasks.publish.publish import download

        path = download(model, cache_dir())
    else:
        path = Path(model)
    return bundle.load(path, device(requested_device))
