"""Record the ternary gap: the distilled BitNet b1.58 student against its float teacher, from one run.

The peer is the teacher itself, measured by the same eval in the same run (tasks/evals/evaluate.py): validation
loss and bits per byte on the same held-out documents, HumanEval pass@1, the published bundles' sizes and
greedy generation tokens/s. Run it after a pipeline run with distillation on (`make demo`: the tiny overlay
turns it on) and it writes `bench/results/<date>-ternary-gap-<bundle>.json` and prints the README's row.

    make demo && python bench/distill.py [--workdir DIR]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        sys.exit(f"{path}: not found or not JSON; run the pipeline with distill.enabled first (make demo)")


def packed_linears(bundle: Path) -> dict:
    """The student bundle's packed block weights: their bytes against the same weights in fp32."""
    from safetensors import safe_open

    packed = fp32 = 0
    with safe_open(str(bundle / "model.safetensors"), "pt") as f:
        for name in f.keys():
            if name.endswith(".weight_shape"):
                base = name[:-len("_shape")]
                fp32 += 4 * int(f.get_tensor(name).prod())
                packed += sum(f.get_tensor(base + s).numel() * f.get_tensor(base + s).element_size()
                              for s in ("", "_scale", "_shape"))
    return {"fp32_bytes": fp32, "packed_bytes": packed, "ratio": round(fp32 / packed, 2) if packed else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("."), help="the project directory of the run")
    args = ap.parse_args()
    metrics = args.workdir / "metrics"
    ev, distill, publish = (read(metrics / f"{name}.json") for name in ("eval", "distill", "publish"))
    if not ev.get("comparison") or not publish.get("student"):
        sys.exit(f"{metrics}/eval.json has no teacher vs student comparison; set distill.enabled and re-run")
    c = ev["comparison"]
    record = {"date": dt.date.today().isoformat(), "comparison": c,
              # as published: the teacher's bundle also holds its transformers export (hf/), the student's none
              "published_bytes": {"teacher": publish["bytes"], "student": publish["student"]["bytes"]},
              "student_training": {k: distill.get(k) for k in ("steps", "final_loss", "final_val_loss", "init",
                                                               "teacher", "distill", "model")},
              "block_linears": packed_linears(args.workdir / publish["student"]["bundle"]),
              "per_source_bpb": {"teacher": {s: v["bpb"] for s, v in ev["per_source"].items()},
                                 "student": {s: v["bpb"] for s, v in ev["student"]["per_source"].items()}}}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{record['date']}-ternary-gap-{Path(publish['student']['bundle']).name}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    t, s, gap = c["teacher"], c["student"], c["gap"]
    lin = record["block_linears"]
    print(f"| block linear weights | {lin['fp32_bytes'] / 1e6:.2f} MB fp32 | {lin['packed_bytes'] / 1e6:.2f} MB packed | "
          f"{lin['ratio']:.1f}x smaller |")
    print(f"| val loss | {t['val_loss']:.3f} | {s['val_loss']:.3f} | {gap['val_loss']:+.3f} |\n"
          f"| bits per byte | {t['val_bpb']:.3f} | {s['val_bpb']:.3f} | {gap['val_bpb']:+.3f} |\n"
          f"| bundle (weights, config, tokenizer) | {t['bundle_bytes'] / 1e6:.2f} MB | {s['bundle_bytes'] / 1e6:.2f} MB"
          f" | {gap['bundle_size_ratio']:.2f}x smaller |\n"
          f"| generation tok/s | {t['generation_tokens_per_s']:,.0f} | {s['generation_tokens_per_s']:,.0f} | "
          f"{gap['speed_ratio']:.2f}x |\n→ {out}")


if __name__ == "__main__":
    main()
