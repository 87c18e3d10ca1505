"""Redo the seed's local pilot (configs/seed-pilot.yaml) and record the curve and samples.

The seed's pilot — 4L/128D/4H, BPE-4K, 3,000 steps — stalled at loss 5.2 with grad norm climbing to
50–3,000+. This runs the same size and step count on the built-in chat corpus with our recipe and writes
`bench/results/<date>-seed-pilot/` (metrics, loss curve, validation curve, samples, a PNG of the curve).

    python bench/pilot.py [--workdir DIR]     # ~1 hour on a 2-core CPU
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatpipe.tasks.common.config import PROJECT_ROOT, load_params  # noqa: E402
from chatpipe.tasks.common.layout import Layout  # noqa: E402
from chatpipe.tasks.ingest import ingest  # noqa: E402
from chatpipe.tasks.tokens import shard, tokenizer  # noqa: E402
from chatpipe.tasks.train import loop  # noqa: E402


def plot(curve_csv: Path, val_csv: Path, out: Path) -> None:
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(curve_csv)))
    val = list(csv.DictReader(open(val_csv)))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=0.6, label="train loss")
    a.plot([int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label="val loss")
    a.axhline(4.0, ls="--", c="gray", label="gate: 4.0")
    a.axhline(5.2, ls=":", c="red", label="seed pilot: 5.2")
    a.set_xlabel("step"); a.set_ylabel("loss"); a.legend()
    b.plot([int(r["step"]) for r in rows], [float(r["grad_norm"]) for r in rows], lw=0.6)
    b.set_xlabel("step"); b.set_ylabel("grad norm (before clipping)"); b.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("-S", "--set", action="append", default=[], help="extra params override")
    args = ap.parse_args()
    params = load_params([PROJECT_ROOT / "configs" / "seed-pilot.yaml"], ["train.device=cpu", *args.set],
                         base=PROJECT_ROOT / "params.yaml")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="seed-pilot-"))
    (root / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "data" / "chat_combined.txt", root / "data")
    layout = Layout(root)
    with contextlib.chdir(root):
        for stage in (ingest, tokenizer, shard):
            if not (root / "metrics" / f"{stage.__name__.split('.')[-1]}.json").exists():
                print(stage.run(params, layout).summary, flush=True)
        result = loop.run(params, layout, "pilot")
    print(result.summary)
    out = PROJECT_ROOT / "bench" / "results" / f"{dt.date.today().isoformat()}-seed-pilot"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pilot.json", "pilot_curve.csv", "pilot_val.csv", "shard.json", "tokenizer.json"):
        shutil.copy(root / "metrics" / name, out / name)
    plot(out / "pilot_curve.csv", out / "pilot_val.csv", out / "pilot_curve.png")
    m = result.metrics
    (out / "samples.md").write_text("\n\n".join(f"**{s['prompt'].strip()}**{s['completion']}" for s in m["samples"]))
    print(json.dumps({k: m[k] for k in ("final_loss", "final_val_loss", "grad_norm_p99", "grad_norm_max",
                                        "tokens_per_s", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
