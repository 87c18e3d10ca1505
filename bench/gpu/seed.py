"""Part e of the GPU run: the seed's chat config for real — pilot, health gate, full run — and a bundle.

The pipeline's own stages, called in-process (the GPU image has no Prefect or DVC): `tasks.train.loop`
for the pilot and the full run, `tasks.train.gate` between them, `tasks.common.bundle` for the result.
Params: the project's params.yaml (the seed config) with configs/seed-gpu.yaml over it (cuda, CUDA graphs,
a cadence of validation, samples and checkpoints that does not dominate). CUDA graphs (`train.compile:
reduce-overhead`) are the lever against the host-bound step the first GPU run measured, and never ran before: if
a phase fails in that mode, the failure is recorded and the phase trains again (from its last checkpoint) in
torch.compile's default mode, and so does the full run after such a pilot. The suite runs each step as its
own process under its own time limit, so a full run cut short still leaves its last checkpoint and curve:

    python bench/gpu/seed.py pilot  --project DIR --out DIR   # pilot + gate  → seed-pilot.json
    python bench/gpu/seed.py full   --project DIR --out DIR   # the full run  → seed-full.json
    python bench/gpu/seed.py bundle --project DIR --out DIR   # bundle + curves + plot → seed-bundle.json

`--smoke` trains a tiny model for a few steps on CPU (the same code path; the suite's --cpu-smoke).
DIR is a project directory with data/shards/, artifacts/tokenizer/ and params.yaml (bench/gpu/prepare.sh
builds it from the built-in corpus into .gpu-carry/seed/).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatpipe.tasks.common import bundle
from chatpipe.tasks.common.config import PROJECT_ROOT, load_params
from chatpipe.tasks.common.errors import ConfigError
from chatpipe.tasks.common.layout import Layout
from chatpipe.tasks.train import checkpoint, gate, loop
from chatpipe.tasks.train.backends.devices import DEVICES

OVERLAY = PROJECT_ROOT / "configs" / "seed-gpu.yaml"
SMOKE = ["train.device=cpu", "train.compile=false", "model.n_layer=2", "model.n_embd=64", "model.n_head=4",
         "model.block_size=64", "train.batch_size=4", "pilot.steps=12", "full.steps=6",
         "train.schedule.warmup_steps=3", "train.validation.every=6", "train.validation.batches=2", "train.sample.every=12",
         "train.sample.tokens=8", "train.checkpoint.every=6", "train.log_every=3", "train.optimizer.lr=3e-3",
         "gate.max_loss=8", "gate.window=6", "gate.max_grad_norm_p99=100", "gate.min_turn_rate=0"]
PART_BYTES = 15 * 2**20  # what comes back from the GPU machine: at most 16 MiB a file
DEFAULT_COMPILE = "train.compile=true"  # torch.compile's default mode: the fallback from CUDA graphs
Load = Callable[..., object]  # load(*overrides) -> Params: the seed's params with these on top


def record(result, params, extra: dict | None = None) -> dict:
    m = result.metrics
    steps_per_s = m.get("tokens_per_s") and m["tokens_per_s"] / (params.train.batch_size * params.model.block_size)
    return {"ok": result.ok, "summary": result.summary, "metrics": m, "mfu": mfu(m),
            "steps_per_s": steps_per_s and round(steps_per_s, 1), **(extra or {})}


def trained(load: Load, layout: Layout, phase: str, *overrides: str):
    """The phase trained in the params' compile mode: (its result, its params, the mode it trained in). CUDA graphs
    that fail are recorded, and the phase trains again in torch.compile's default mode from its last checkpoint."""
    params = load(*overrides)
    try:
        return loop.run(params, layout, phase), params, {"compile": params.train.compile}
    except Exception as e:  # noqa: BLE001 - the lever failed: recorded, and the fallback trains
        if params.train.compile != "reduce-overhead":
            raise
        error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        print(f"seed {phase}: CUDA graphs failed ({error}); again in torch.compile's default mode", flush=True)
        torch._dynamo.reset()
        params = load(*overrides, DEFAULT_COMPILE)
        return loop.run(params, layout, phase), params, {"compile": True, "graphs_failed": error}


def mfu(metrics: dict) -> float | None:
    """Model FLOPs utilisation of the last logging window against the datasheet's dense bf16 peak."""
    peak = DEVICES["cuda"].peak_flops() if DEVICES["cuda"].status() is None else None
    if not (peak and metrics.get("tokens_per_s")):
        return None
    return round(metrics["flops_per_token"] * metrics["tokens_per_s"] / peak, 4)


def pilot(load: Load, layout: Layout, out: Path) -> None:
    run, params, mode = trained(load, layout, "pilot")
    result = {"pilot": record(run, params, mode)}
    if run.ok:
        judged = gate.run(params, layout, "pilot")
        result["gate"] = {"ok": judged.ok, "summary": judged.summary,
                          "report": json.loads(layout.metrics("gate").read_text())}
    (out / "seed-pilot.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v["summary"] for k, v in result.items()}, indent=2))


def full(load: Load, layout: Layout, out: Path) -> None:
    piloted = out / "seed-pilot.json"  # a pilot whose CUDA graphs failed: the full run goes without them
    fell_back = piloted.exists() and "graphs_failed" in json.loads(piloted.read_text()).get("pilot", {})
    run, params, mode = trained(load, layout, "full", *([DEFAULT_COMPILE] if fell_back else []))
    result = record(run, params, mode)
    (out / "seed-full.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(result["summary"])


def curves(layout: Layout, out: Path) -> dict[str, list[dict]]:
    """Every phase's train and val curve in one CSV (phase, kind, step, value), and a plot of them."""
    rows = []
    for phase in ("pilot", "full"):
        for kind, column in (("curve", "loss"), ("val", "val_loss")):
            path = layout.root / "metrics" / f"{phase}_{kind}.csv"
            if path.exists():
                with open(path) as f:
                    rows += [{"phase": phase, "kind": column, "step": int(r["step"]), "value": float(r[column])}
                             for r in csv.DictReader(f)]
    with open(out / "seed-curves.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["phase", "kind", "step", "value"])
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return rows
    fig, ax = plt.subplots(figsize=(10, 4))
    for phase in ("pilot", "full"):
        for kind, style in (("loss", "-"), ("val_loss", "o-")):
            pts = [(r["step"], r["value"]) for r in rows if r["phase"] == phase and r["kind"] == kind]
            if pts:
                ax.plot(*zip(*pts), style, lw=0.6, ms=3, label=f"{phase} {kind}")
    ax.set_xlabel("step (each phase from its own step 0)")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "seed-curves.png", dpi=110)
    return rows


def make_bundle(load: Load, layout: Layout, out: Path) -> None:
    """The latest checkpoint of the furthest phase as a bundle, tarred and cut into parts that come back."""
    phase = next(p for p in ("full", "pilot") if checkpoint.latest(layout.checkpoints / p))
    model, state = checkpoint.latest_model(layout.checkpoints / phase)
    card = (f"# chat-7m-seed\n\nThe seed's chat config trained by bench/gpu/seed.py: {phase} phase, "
            f"step {state['step']}.\n")
    directory = bundle.write(layout.root / "dist" / "chat-7m-seed", model, layout.tokenizer, card)
    tar = layout.root / "dist" / "chat-7m-seed.tar"
    with tarfile.open(tar, "w") as t:
        t.add(directory, arcname=directory.name)
    data, parts = tar.read_bytes(), []
    for i in range(0, len(data), PART_BYTES):
        parts.append(out / f"seed-bundle.tar.{i // PART_BYTES:02d}")
        parts[-1].write_bytes(data[i:i + PART_BYTES])
    rows = curves(layout, out)
    result = {"phase": phase, "step": state["step"], "bundle_bytes": len(data), "parts": [p.name for p in parts],
              "curve_points": len(rows), "join": "cat seed-bundle.tar.* | tar -x"}
    (out / "seed-bundle.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


STEPS = {"pilot": pilot, "full": full, "bundle": make_bundle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=STEPS)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("-S", "--set", action="append", default=[], help="a params override, key=value (repeatable)")
    args = ap.parse_args()
    def load(*overrides: str):
        return load_params([OVERLAY], [*(SMOKE if args.smoke else []), *args.set, *overrides],
                           base=args.project / "params.yaml")

    try:
        load()  # bad params or no project: refused in one line before any work
    except ConfigError as e:
        sys.exit(f"bench/gpu/seed.py: {e}")
    args.out.mkdir(parents=True, exist_ok=True)
    STEPS[args.step](load, Layout(args.project.resolve()), args.out.resolve())


if __name__ == "__main__":
    main()
