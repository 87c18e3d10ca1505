"""A phase's loss curves as files, and the numbers that summarize them.

Why its own module: DVC plots `metrics/<phase>_curve.csv` (step, loss, lr, grad_norm) and
`metrics/<phase>_val.csv` (step, val_loss), and `metrics/<phase>.json` carries `summary()`; the loop only
appends rows to its state (`state["curve"]`, `state["val"]`), and these files are written from them at
every checkpoint and at the end, so they always agree with the latest checkpoint.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from chatpipe.tasks.common import atomic
from chatpipe.tasks.common.layout import Layout


def write(layout: Layout, phase: str, state: dict) -> None:
    for name, header, rows in ((f"{phase}_curve.csv", ("step", "loss", "lr", "grad_norm"), state["curve"]),
                               (f"{phase}_val.csv", ("step", "val_loss"), state["val"])):
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(header)
        writer.writerows(rows)
        atomic.write_bytes(layout.root / "metrics" / name, buf.getvalue().encode())


def summary(state: dict, window: int = 50) -> dict:
    """Steps, the loss over the last `window` steps, the last validation loss and the grad-norm tail.

    A run stopped by a NaN/inf loss has no final loss (null, not NaN: the file stays valid JSON); the other
    numbers are over its finite values."""
    losses = [row[1] for row in state["curve"]]
    finite = [x for x in losses if math.isfinite(x)]
    norms = [row[3] for row in state["curve"] if math.isfinite(row[3])]
    tail = losses[-window:]
    return {
        "steps": len(losses),
        "final_loss": float(np.mean(tail)) if tail and all(map(math.isfinite, tail)) else None,
        "min_loss": min(finite) if finite else None,
        "final_val_loss": state["val"][-1][1] if state["val"] else None,
        "grad_norm_p99": float(np.percentile(norms, 99)) if norms else None,
        "grad_norm_max": max(norms) if norms else None,
    }
