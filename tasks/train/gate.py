"""Health gate: `chatpipe gate` judges the pilot run before the full run may start.

The full run is the expensive one, so it only starts on a healthy pilot. The gate reads what the pilot
wrote (`metrics/pilot.json` with its samples, `metrics/pilot_curve.csv`, `metrics/pilot_val.csv`) and
runs every check, with thresholds from the `gate:` section of params.yaml; w is `gate.window` (or the
number of steps, if fewer):

1. `finite`: no NaN or inf anywhere in the train curve or the val curve.
2. `train_loss`: the mean train loss over the last w steps is below `max_loss`.
3. `val_loss`: the mean val loss over the last w steps (at least the last one) is below `max_loss`.
4. `loss_spikes`: no step loss above `spike_factor` × the median of the w steps before it.
5. `grad_norm_p99`: the 99th percentile of the grad norm over the last half of the run (past the early
   transient) is below `max_grad_norm_p99`.
6. `still_improving`: over the last w steps, the first half's mean loss minus the second half's is at
   least `min_improvement`, less two standard errors of that difference (per-step losses are noisy: a
   healthy run at the end of its schedule is flat within noise; a diverging one rises beyond it).
7. `turn_structure`: the share of samples that stopped on their own with a non-empty completion and no
   turn marker inside it is at least `min_turn_rate`.

Checks other than `finite` judge only the finite values, so each failure shows up under its own name.
`metrics/gate.json` is written every time, pass or fail, with every check's value, threshold, verdict
and detail; a failed gate is a result with ok=False whose one-line summary names the failed checks:
`chatpipe gate` exits non-zero on it and the flow raises `GateFailed` (tasks/common/errors.py).
"""
from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatpipe.tasks.chat.turns import turn_problem
from chatpipe.tasks.common.config import GateParams, Params, params_dict
from chatpipe.tasks.common.errors import ConfigError, InputError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.common.stage import StageResult, finish

PHASES = ("pilot", "full")
CURVE_COLUMNS = ("step", "loss", "lr", "grad_norm")
VAL_COLUMNS = ("step", "val_loss")


@dataclass(frozen=True)
class Pilot:
    """What the gate judges: one phase's curves and samples, and the window w."""
    step: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    grad_norm: np.ndarray
    val_step: np.ndarray
    val_loss: np.ndarray
    samples: list
    window: int


@dataclass(frozen=True)
class Check:
    name: str
    value: float | int | None  # None: nothing finite to judge
    threshold: float | int
    ok: bool
    detail: str
    phrase: str = ""    # for the summary line on a pass
    fails_as: str = "≥"  # the comparison a failing value has with the threshold

    def report(self) -> dict:
        value = self.value if isinstance(self.value, int) else _number(self.value)
        return {"name": self.name, "value": value, "threshold": self.threshold,
                "verdict": "pass" if self.ok else "fail", "detail": self.detail}

    def failure(self) -> str:
        if self.value is None:
            return f"{self.name} n/a ({self.detail})"
        return f"{self.name} {_fmt(self.value)} {self.fails_as} {_fmt(self.threshold)}"


# ---------------------------------------------------------------- reading the pilot's metrics

def _fmt(x: float | int) -> str:
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:.0f}"
    s = f"{x:.3g}"
    return s if any(c in s for c in ".en") else f"{s}.0"


def _number(x) -> float | None:
    """A JSON-safe float: non-finite values become null (the `finite` check counts them)."""
    return float(x) if x is not None and math.isfinite(x) else None


def _read_csv(path: Path, columns: tuple[str, ...], phase: str) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise InputError(f"{path}: no {phase} curve; run `chatpipe train --phase {phase}` first") from None
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{path}: expected columns {','.join(columns)}, got {','.join(header) or 'nothing'}")
    index = [header.index(c) for c in columns]
    out = {c: [] for c in columns}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            for c, i in zip(columns, index):
                out[c].append(float(row[i]))
        except (ValueError, IndexError):
            raise InputError(f"{path}:{line}: expected numbers for {','.join(columns)}, got {','.join(row)!r}") \
                from None
    return {c: np.asarray(v, dtype=float) for c, v in out.items()}


def _read_metrics(path: Path, phase: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no {phase} metrics; run `chatpipe train --phase {phase}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def load(params: Params, layout: Layout, phase: str) -> Pilot:
    metrics_dir = layout.root / "metrics"
    data = _read_metrics(metrics_dir / f"{phase}.json", phase)
    curve_path = metrics_dir / f"{phase}_curve.csv"
    curve = _read_csv(curve_path, CURVE_COLUMNS, phase)
    val = _read_csv(metrics_dir / f"{phase}_val.csv", VAL_COLUMNS, phase)
    if not len(curve["step"]):
        raise InputError(f"{curve_path}: no steps recorded; run `chatpipe train --phase {phase}` first")
    samples = data.get("samples") or []
    return Pilot(curve["step"], curve["loss"], curve["lr"], curve["grad_norm"], val["step"], val["val_loss"],
               samples if isinstance(samples, list) else [], min(params.gate.window, len(curve["step"])))


def _steps(steps: np.ndarray) -> str:
    return f"step {steps[0]:.0f}" if len(steps) == 1 else f"steps {steps[0]:.0f}–{steps[-1]:.0f}"


# ---------------------------------------------------------------- the checks

def check_finite(run: Pilot, gate: GateParams) -> Check:
    bad = []
    for name, steps, values in (("loss", run.step, run.loss), ("lr", run.step, run.lr),
                                ("grad_norm", run.step, run.grad_norm), ("val_loss", run.val_step, run.val_loss)):
        where = ~np.isfinite(values)
        bad += [f"{name} {values[i]} at step {steps[i]:.0f}" for i in np.flatnonzero(where)]
    total = len(run.loss) * 3 + len(run.val_loss)
    if not bad:
        detail = f"all {total} curve values are finite"
    else:
        detail = f"{len(bad)} of {total} curve values are NaN or inf: {', '.join(bad[:3])}" \
                 + (", ..." if len(bad) > 3 else "")
    return Check("finite", len(bad), 0, not bad, detail, "no NaN/inf", ">")


def check_train_loss(run: Pilot, gate: GateParams) -> Check:
    tail, steps = run.loss[-run.window:], run.step[-run.window:]
    finite = tail[np.isfinite(tail)]
    if not len(finite):
        return Check("train_loss", None, gate.max_loss, False,
                     f"no finite train loss over {_steps(steps)}")
    value = float(finite.mean())
    return Check("train_loss", value, gate.max_loss, value < gate.max_loss,
                 f"mean train loss over the last {run.window} steps ({_steps(steps)})",
                 f"train loss {_fmt(value)} < {_fmt(gate.max_loss)}")


def check_val_loss(run: Pilot, gate: GateParams) -> Check:
    if not len(run.val_step):
        return Check("val_loss", None, gate.max_loss, False, "no validation loss recorded")
    start = run.step[-run.window]
    mask = run.val_step >= start
    if not mask.any():
        mask[-1] = True
    steps, losses = run.val_step[mask], run.val_loss[mask]
    finite = losses[np.isfinite(losses)]
    if not len(finite):
        return Check("val_loss", None, gate.max_loss, False, f"no finite val loss at {_steps(steps)}")
    value = float(finite.mean())
    return Check("val_loss", value, gate.max_loss, value < gate.max_loss,
                 f"mean of {len(finite)} val loss{'es' if len(finite) > 1 else ''} at {_steps(steps)}",
                 f"val loss {_fmt(value)} < {_fmt(gate.max_loss)}")


def check_loss_spikes(run: Pilot, gate: GateParams) -> Check:
    w, loss = run.window, np.where(np.isfinite(run.loss), run.loss, np.nan)
    if len(loss) <= w:
        return Check("loss_spikes", None, gate.spike_factor, True,
                     f"the run ({len(loss)} steps) is no longer than the window ({w}); nothing to judge",
                     "no loss spikes")
    windows = np.lib.stride_tricks.sliding_window_view(loss[:-1], w)  # row i: loss[i:i+w], before step i+w
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a window of only NaN/inf has no median
        medians = np.nanmedian(windows, axis=1)
        ratios = loss[w:] / medians
    ratios = np.where(np.isfinite(ratios) & (medians > 0), ratios, np.nan)
    if np.isnan(ratios).all():
        return Check("loss_spikes", None, gate.spike_factor, True, "no finite loss to judge", "no loss spikes")
    spikes = int(np.sum(ratios > gate.spike_factor))
    worst = int(np.nanargmax(ratios))
    value = float(ratios[worst])
    detail = (f"{spikes} of {len(ratios)} steps have a loss above {_fmt(gate.spike_factor)}× the median of the "
              f"{w} steps before; the largest is {value:.2f}× at step {run.step[w + worst]:.0f}")
    return Check("loss_spikes", value, gate.spike_factor, spikes == 0, detail,
                 f"no loss spikes (max {value:.2f}× ≤ {_fmt(gate.spike_factor)}×)", ">")


def check_grad_norm(run: Pilot, gate: GateParams) -> Check:
    half = len(run.grad_norm) // 2
    norms, steps = run.grad_norm[half:], run.step[half:]
    finite = norms[np.isfinite(norms)]
    if not len(finite):
        return Check("grad_norm_p99", None, gate.max_grad_norm_p99, False,
                     f"no finite grad norm over {_steps(steps)}")
    value = float(np.percentile(finite, 99))
    return Check("grad_norm_p99", value, gate.max_grad_norm_p99, value < gate.max_grad_norm_p99,
                 f"99th percentile of the pre-clipping grad norm over the last half of the run ({_steps(steps)}); "
                 f"max {finite.max():.3g}",
                 f"grad norm p99 {_fmt(value)} < {_fmt(gate.max_grad_norm_p99)}")


def check_still_improving(run: Pilot, gate: GateParams) -> Check:
    tail, steps = run.loss[-run.window:], run.step[-run.window:]
    h = len(tail) // 2
    first, second = tail[:h], tail[h:]
    first, second = first[np.isfinite(first)], second[np.isfinite(second)]
    if not len(first) or not len(second):
        return Check("still_improving", None, gate.min_improvement, False,
                     f"needs finite losses in both halves of the last {run.window} steps")
    a, b = float(first.mean()), float(second.mean())
    value = a - b
    # per-step losses are noisy: allow two standard errors of the difference of the two means
    noise = 2 * math.sqrt(first.var() / len(first) + second.var() / len(second))
    return Check("still_improving", value, gate.min_improvement, value >= gate.min_improvement - noise,
                 f"mean loss {a:.4f} over {_steps(steps[:h])}, {b:.4f} over {_steps(steps[h:])}; "
                 f"noise allowance {noise:.4f} (2 standard errors)",
                 f"improving by {_fmt(value)} ≥ {_fmt(gate.min_improvement)} - noise {_fmt(noise)}", "<")


def check_turn_structure(run: Pilot, gate: GateParams) -> Check:
    if not run.samples:
        return Check("turn_structure", None, gate.min_turn_rate, False, "no samples in the metrics file")
    problems = [p for s in run.samples if (p := s["problem"] if "problem" in s else turn_problem(s))]
    clean = len(run.samples) - len(problems)
    value = clean / len(run.samples)
    counts = {p: problems.count(p) for p in dict.fromkeys(problems)}
    detail = f"{clean} of {len(run.samples)} samples end their turn cleanly" + \
             ("".join(f"; {n} {p}" for p, n in counts.items()))
    return Check("turn_structure", value, gate.min_turn_rate, value >= gate.min_turn_rate, detail,
                 f"clean turns {_fmt(value)} ≥ {_fmt(gate.min_turn_rate)}", "<")


CHECKS = (check_finite, check_train_loss, check_val_loss, check_loss_spikes, check_grad_norm,
          check_still_improving, check_turn_structure)


# ---------------------------------------------------------------- the stage

def run(params: Params, layout: Layout = Layout(), phase: str = "pilot") -> StageResult:
    """Judge the phase; metrics/gate.json either way. An unhealthy run is a result with ok=False whose
    summary names the failed checks (the CLI exits non-zero on it, the flow stops there)."""
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
    pilot = load(params, layout, phase)
    checks = [check(pilot, params.gate) for check in CHECKS]
    passed = all(c.ok for c in checks)
    report = {"passed": passed, "phase": phase,
              "checks": [c.report() for c in checks]}
    path = layout.metrics("gate")
    if passed:
        phrases = [c.phrase for c in checks if c.name != "finite"] + [checks[0].phrase]
        summary = f"gate: passed {len(checks)}/{len(checks)} checks ({', '.join(phrases)}) → {path}"
    else:
        summary = f"gate failed: {'; '.join(c.failure() for c in checks if not c.ok)} (report: {path})"
    return finish(layout, "gate", summary, report, [path], params.tracking,
                  {"gate": params_dict(params)["gate"], "phase": phase}, ok=passed)  # recorded pass or fail
