"""Teacher against student: the numbers side by side and the student's gap, and their markdown table.

Eval writes the comparison into metrics/eval.json and reports/eval.md; the flow's report shows the same
table (flows/report.py), so it is built here once.
"""
from __future__ import annotations


def percent(x: float) -> str:
    return f"{x:.1%}"


def _pass1(m: dict) -> float | None:
    return m["humaneval"]["pass@1_greedy"] if m["humaneval"] else None


def comparison(teacher: dict, student: dict) -> dict:
    """Teacher and student side by side, and the student's gap (student - teacher; ratios for size, speed)."""
    rows = {}
    for name, m in (("teacher", teacher), ("student", student)):
        rows[name] = {"checkpoint": m["checkpoint"], "quant": m["quant"], "val_loss": m["val_loss"],
                      "val_bpb": m["val_bpb"], "humaneval_pass1": _pass1(m), "bundle_bytes": m["bundle_bytes"],
                      "generation_tokens_per_s": m["generation_tokens_per_s"]}
    t, s = rows["teacher"], rows["student"]
    rows["gap"] = {"val_loss": round(s["val_loss"] - t["val_loss"], 5), "val_bpb": round(s["val_bpb"] - t["val_bpb"], 5),
                   "humaneval_pass1": None if t["humaneval_pass1"] is None else s["humaneval_pass1"] - t["humaneval_pass1"],
                   "bundle_size_ratio": round(t["bundle_bytes"] / s["bundle_bytes"], 3),
                   "speed_ratio": round(s["generation_tokens_per_s"] / t["generation_tokens_per_s"], 3)}
    return rows


def comparison_table(c: dict) -> list[str]:
    """The teacher vs student table (markdown lines)."""
    t, s, gap = c["teacher"], c["student"], c["gap"]

    def pass1(x: float | None) -> str:
        return "–" if x is None else percent(x)

    he_gap = "–" if gap["humaneval_pass1"] is None else f"{gap['humaneval_pass1']:+.1%}"
    rows = [("validation loss", f"{t['val_loss']:.4f}", f"{s['val_loss']:.4f}", f"{gap['val_loss']:+.4f}"),
            ("bits per byte", f"{t['val_bpb']:.4f}", f"{s['val_bpb']:.4f}", f"{gap['val_bpb']:+.4f}"),
            ("HumanEval pass@1 (greedy)", pass1(t["humaneval_pass1"]), pass1(s["humaneval_pass1"]), he_gap),
            ("bundle size", f"{t['bundle_bytes'] / 1e6:.2f} MB", f"{s['bundle_bytes'] / 1e6:.2f} MB",
             f"{gap['bundle_size_ratio']:.2f}x smaller"),
            ("generation tokens/s", f"{t['generation_tokens_per_s']:,.0f}", f"{s['generation_tokens_per_s']:,.0f}",
             f"{gap['speed_ratio']:.2f}x")]
    return ["## Teacher vs student", "",
            (f"Teacher `{t['checkpoint']}` ({t['quant'] or 'float'}), student `{s['checkpoint']}` "
             f"({s['quant'] or 'float'}, distilled from it)."), "",
            "| measure | teacher | student | student vs teacher |", "| --- | ---: | ---: | ---: |",
            *(f"| {' | '.join(row)} |" for row in rows)]
